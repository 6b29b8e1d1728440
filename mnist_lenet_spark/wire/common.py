"""What both wire protocols share: the fit's token, where a server listens and is reached, and exact reads."""
from __future__ import annotations

import socket
import time
from typing import NamedTuple

import numpy as np

TOKEN_BYTES = 32  # every connection starts with the fit's token: it reaches the tasks inside their closure


def listen(bind: str, ports: range) -> socket.socket:
    """A listening socket on the first free port of ``ports``; OSError naming the range if none is."""
    for port in ports:
        try:
            return socket.create_server((bind, port), backlog=64)
        except OSError as e:
            error = e
    raise OSError(f"no free port in {ports.start}-{ports.stop - 1} on {bind} ({error.strerror})")


class Endpoint(NamedTuple):
    """Where the tasks ask, and the token they prove themselves with."""
    host: str
    port: int
    token: bytes


def recv_exact(conn: socket.socket, size: int, deadline: float, into: np.ndarray | None = None) -> bytes | None:
    """``size`` bytes from ``conn`` (into ``into``'s buffer when given: then None is returned) before
    ``deadline`` (time.monotonic()); TimeoutError after it, ConnectionError when the peer closes."""
    buffer = memoryview(into).cast("B") if into is not None else memoryview(bytearray(size))
    got = 0
    while got < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"read timed out with {got} of {size} bytes")
        conn.settimeout(left)
        count = conn.recv_into(buffer[got:size])
        if not count:
            raise ConnectionError("the peer closed the connection")
        got += count
    return None if into is not None else bytes(buffer)

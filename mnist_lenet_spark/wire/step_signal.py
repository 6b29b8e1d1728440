"""The step signal's protocol and its task side: a backup step's tasks ask the driver whether their step is closed,
and push their gradients to it (the server, and why tasks ask and push at all: ``cluster.step_signal``).

Protocol: a client first sends the fit's 32-byte token (it reaches the tasks inside their closure, through Spark's
own task channel), then messages:
- ``?``: a question; the server answers each read with the closed step as a signed 64-bit big-endian integer (-1
  before any step closed);
- ``G`` + ``PUSH`` header (step, shard, example count, loss sum, bytes per float, payload bytes) + the gradient's
  floats (native byte order, never pickle): answered with 1 (the driver holds it) or 0 (not wanted: its step is over
  or has its gradients). A payload of another size than the server expects drops the connection.
One thread and a selector serve every connection; their number is bounded, a client that does not authenticate in
time, goes idle or does not read its answers is dropped. No pyspark import."""
from __future__ import annotations

import logging
import socket
import struct
import time

import numpy as np

from mnist_lenet_spark.wire.common import Endpoint, recv_exact

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 1.0  # the client's connect and read timeout
REPLY = struct.Struct("!q")
PUSH = struct.Struct("!qiqdBQ")  # step, shard, example count, loss sum, bytes per float (4 or 8), payload bytes
PUSH_TIMEOUT_SECONDS = 30.0  # a task's whole push, before it sends its gradient through the accumulator instead
#: after a failed connection a task waits 0.5, 1, 2, 4, 8, 8 ... s before it tries again, at most this many times
RETRIES, FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS = 12, 0.5, 8.0


# Task side: one connection per Python worker process and server, reused from task to task.
_connections: dict[Endpoint, socket.socket] = {}
_failures: dict[Endpoint, tuple[int, float]] = {}  # consecutive failed connections, when to try again


def _connection(endpoint: Endpoint) -> socket.socket | None:
    """This worker's authenticated connection to ``endpoint`` (made if needed), or None while backing off after
    failures; a failure to connect is logged and counted here."""
    conn = _connections.get(endpoint)
    if conn is not None:
        return conn
    failures, retry_at = _failures.get(endpoint, (0, 0.0))
    if failures >= RETRIES or time.monotonic() < retry_at:
        return None
    for other in list(_connections):  # one run at a time: drop connections to older servers
        _connections.pop(other).close()
    try:
        conn = socket.create_connection((endpoint.host, endpoint.port), timeout=TIMEOUT_SECONDS)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(endpoint.token)
    except OSError as e:
        failures += 1
        backoff = min(FIRST_BACKOFF_SECONDS * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)
        _failures[endpoint] = (failures, time.monotonic() + backoff)
        then = f"next in {backoff:g} s" if failures < RETRIES else "late tasks now wait for Spark's cancel"
        log.warning("step signal at %s:%s unreachable (%s), attempt %d of %d; %s", endpoint.host,
                    endpoint.port, e, failures, RETRIES, then)
        return None
    if failures:
        log.warning("step signal at %s:%s reachable again", endpoint.host, endpoint.port)
    _failures.pop(endpoint, None)
    _connections[endpoint] = conn
    return conn


def _ask(endpoint: Endpoint, *message, timeout: float = TIMEOUT_SECONDS) -> int | None:
    """Send the parts of ``message`` (bytes-like) and read the server's answer within ``timeout``; None on any failure
    (a cached connection that turns out stale, its server gone, is replaced once by a fresh one)."""
    for _ in range(2):
        fresh = endpoint not in _connections
        conn = _connection(endpoint)
        if conn is None:
            return None
        try:
            conn.settimeout(timeout)
            for part in message:
                conn.sendall(part)
            reply = recv_exact(conn, REPLY.size, time.monotonic() + timeout)
            conn.settimeout(TIMEOUT_SECONDS)
            return REPLY.unpack(reply)[0]
        except OSError as e:
            _connections.pop(endpoint, None)
            conn.close()
            if fresh:
                log.warning("step signal at %s:%s failed (%s)", endpoint.host, endpoint.port, e)
                return None
    return None


def is_closed(endpoint: Endpoint | None, step: int) -> bool:
    """True when the driver has closed ``step``. Any failure answers False (Spark's cancel still applies); after
    a failed connection the next one is tried only after a back-off, RETRIES times in a row at most."""
    if endpoint is None:
        return False
    closed = _ask(endpoint, b"?")
    return closed is not None and closed >= step


def push(endpoint: Endpoint, step: int, shard: int, grad: np.ndarray, loss_sum: float, count: int) -> bool | None:
    """Send a task's gradient sum (P,) to the driver: True when the driver holds it, False when it is not wanted
    (its step is over or has its gradients), None when it could not be sent (send it another way)."""
    grad = np.ascontiguousarray(grad)
    header = b"G" + PUSH.pack(step, shard, count, loss_sum, grad.itemsize, grad.nbytes)
    answer = _ask(endpoint, header, memoryview(grad).cast("B"), timeout=PUSH_TIMEOUT_SECONDS)
    return None if answer is None else answer == 1

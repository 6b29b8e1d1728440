"""Cooperative cancellation of a backup step's late tasks: the driver serves the newest closed step.

A task asks before each batch (and during an injected delay) and stops by itself when its step
is closed, keeping its Python worker; Spark's cancel is the fallback (README, "Backup workers").
Protocol: the client sends one byte, the server answers the closed step as a signed 64-bit
big-endian integer (-1 before any step closed). No pyspark import here.
"""
from __future__ import annotations

import logging
import socket
import struct
import threading

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 1.0
_REPLY = struct.Struct("!q")


class StepServer:
    """Driver side: serves the number of the newest closed step to the tasks."""

    def __init__(self, host: str = "127.0.0.1"):
        self.closed_step = -1
        self._listener = socket.create_server((host, 0))
        self.address = (host, self._listener.getsockname()[1])
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._start(self._accept)

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name="step-signal", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def close_step(self, step: int) -> None:
        self.closed_step = max(self.closed_step, step)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # the listener was closed: shutdown
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._connections.append(conn)
            self._start(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while conn.recv(1):
                    conn.sendall(_REPLY.pack(self.closed_step))
            except OSError:  # the task's worker went away, or shutdown
                pass

    def shutdown(self) -> None:
        """Close the service and wait for its threads: nothing is left running."""
        with self._lock:
            sockets, threads = [self._listener, *self._connections], list(self._threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept() or recv()
            except OSError:
                pass
            sock.close()
        for thread in threads:
            thread.join(timeout=TIMEOUT_SECONDS)


# Task side: one connection per Python worker process and server, reused from task to task.
_connections: dict[tuple[str, int], socket.socket] = {}
_unreachable: set[tuple[str, int]] = set()


def is_closed(address: tuple[str, int] | None, step: int) -> bool:
    """True when the driver has closed ``step``. Any failure answers False (Spark's cancel still applies)."""
    if address is None or address in _unreachable:
        return False
    for _ in range(2):  # a cached connection may be stale (its server is gone): retry once on a fresh one
        conn = _connections.get(address)
        fresh = conn is None
        try:
            if fresh:
                for other in list(_connections):  # one run at a time: drop connections to older servers
                    _connections.pop(other).close()
                conn = socket.create_connection(address, timeout=TIMEOUT_SECONDS)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _connections[address] = conn
            conn.sendall(b"?")
            reply = b""
            while len(reply) < _REPLY.size:
                chunk = conn.recv(_REPLY.size - len(reply))
                if not chunk:
                    raise ConnectionError("the step signal server closed the connection")
                reply += chunk
            return _REPLY.unpack(reply)[0] >= step
        except OSError as e:
            _connections.pop(address, None)
            if conn is not None:
                conn.close()
            if fresh:
                _unreachable.add(address)
                log.warning("step signal at %s:%s unreachable (%s); late tasks will wait for Spark's cancel",
                            address[0], address[1], e)
                return False
    return False

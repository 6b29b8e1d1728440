"""Cooperative cancellation of a backup step's late tasks: the driver serves the newest closed step.

A task asks before each batch (and during an injected delay) and stops by itself when its step
is closed, keeping its Python worker; Spark's cancel is the fallback (README, "Backup workers").
Protocol: a client first sends the fit's 32-byte token (it reaches the tasks inside their
closure, through Spark's own task channel), then one byte per question; the server answers each
read with the closed step as a signed 64-bit big-endian integer (-1 before any step closed).
One thread and a selector serve every connection; their number is bounded, a client that does
not authenticate in time, goes idle or does not read its answers is dropped. No pyspark import.
"""
from __future__ import annotations

import hmac
import logging
import resource
import secrets
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 1.0  # the client's connect and read timeout
TOKEN_BYTES = 32
_REPLY = struct.Struct("!q")
#: Spark conf key of the driver port (or ``LOW-HIGH`` range) the service listens on; default: any free port
PORT_CONF = "spark.mnistLenet.stepSignal.port"
#: after a failed connection a task waits 0.5, 1, 2, 4, 8, 8 ... s before it tries again, at most this many times
RETRIES, FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS = 12, 0.5, 8.0


def parse_ports(value: str | None) -> range:
    """``PORT_CONF``'s value as the ports to try: "0" or unset: any free one; "7100"; "7100-7110"."""
    text = (value or "0").strip()
    try:
        low, _, high = text.partition("-")
        low, high = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"{PORT_CONF}: expected a port or LOW-HIGH, got {text!r}") from None
    if not (0 <= low <= high <= 65535) or (low == 0 and high != 0):
        raise ValueError(f"{PORT_CONF}: expected ports in 1..65535 (LOW <= HIGH) or 0, got {text!r}")
    return range(low, high + 1)


def _listen(bind: str, ports: range) -> socket.socket:
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


@dataclass
class _Client:
    since: float  # time.monotonic() of the last byte received (or of the accept)
    authenticated: bool = False
    received: bytearray = field(default_factory=bytearray)  # token bytes so far


class StepServer:
    """Driver side: serves the number of the newest closed step to the tasks that know the token.

    ``bind``: the address to listen on (Spark's ``spark.driver.bindAddress``); ``host``: the one
    the tasks connect to (``spark.driver.host``; default: ``bind``); ``ports``: where to listen
    (``parse_ports``).
    """
    AUTH_SECONDS = 2.0  # a new connection must present the token within this
    IDLE_SECONDS = 60.0  # an authenticated connection silent this long is closed (its task reconnects)

    def __init__(self, bind: str = "127.0.0.1", host: str | None = None, max_connections: int | None = None,
                 ports: range = range(0, 1), token: bytes | None = None):
        self.closed_step = -1
        self.token = token or secrets.token_bytes(TOKEN_BYTES)
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        # a quarter of the descriptors at most: the driver needs the rest (Py4J, broadcasts, files)
        self.max_connections = max_connections or max(4, min(256, soft_limit // 4))
        self.dropped = 0  # connections closed for too many, no or a wrong token, idleness, or not reading
        self._listener = _listen(bind, ports)
        self._listener.setblocking(False)
        self.endpoint = Endpoint(host or bind, self._listener.getsockname()[1], self.token)
        self._clients: dict[socket.socket, _Client] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake, self._waker = socket.socketpair()
        self._selector.register(self._wake, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="step-signal", daemon=True)
        self._thread.start()

    def close_step(self, step: int) -> None:
        self.closed_step = max(self.closed_step, step)

    def _serve(self) -> None:
        while True:
            try:
                events = self._selector.select(timeout=0.5)
                now = time.monotonic()
                for key, _ in events:
                    if key.fileobj is self._wake:
                        return
                    if key.fileobj is self._listener:
                        self._accept(now)
                    else:
                        self._answer(key.fileobj, now)
                self._expire(now)
            except Exception:  # never let a client take the service, or the driver, down
                log.exception("step signal: unexpected error; serving on")

    def _accept(self, now: float) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            if len(self._clients) >= self.max_connections:
                conn.close()
                self.dropped += 1
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # room for ~1,000 unread answers: a client that asks without reading is soon found out
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            self._selector.register(conn, selectors.EVENT_READ)
            self._clients[conn] = _Client(now)

    def _answer(self, conn: socket.socket, now: float) -> None:
        client = self._clients[conn]
        try:
            data = conn.recv(256)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return self._drop(conn, counted=False)
        client.since = now
        if not client.authenticated:
            client.received += data
            if len(client.received) < TOKEN_BYTES:
                return
            if not hmac.compare_digest(bytes(client.received[:TOKEN_BYTES]), self.token):
                return self._drop(conn)
            client.authenticated = True
            data = bytes(client.received[TOKEN_BYTES:])
            client.received = bytearray()
            if not data:
                return
        try:  # one answer per read, however many bytes came: a flood of questions costs one reply
            conn.send(_REPLY.pack(self.closed_step))
        except OSError:  # its buffer is full (it does not read) or it went away
            self._drop(conn)

    def _expire(self, now: float) -> None:
        for conn, client in list(self._clients.items()):
            limit = self.IDLE_SECONDS if client.authenticated else self.AUTH_SECONDS
            if now - client.since > limit:
                self._drop(conn)

    def _drop(self, conn: socket.socket, counted: bool = True) -> None:
        self._selector.unregister(conn)
        del self._clients[conn]
        conn.close()
        self.dropped += counted

    @property
    def connections(self) -> int:
        return len(self._clients)

    def shutdown(self) -> None:
        """Close the service and wait for its thread: nothing is left running or open."""
        self._waker.send(b"x")
        self._thread.join(timeout=5)
        for conn in list(self._clients):
            self._drop(conn, counted=False)
        for sock in (self._listener, self._wake, self._waker):
            sock.close()
        self._selector.close()


# Task side: one connection per Python worker process and server, reused from task to task.
_connections: dict[Endpoint, socket.socket] = {}
_failures: dict[Endpoint, tuple[int, float]] = {}  # consecutive failed connections, when to try again


def is_closed(endpoint: Endpoint | None, step: int) -> bool:
    """True when the driver has closed ``step``. Any failure answers False (Spark's cancel still applies); after
    a failed connection the next one is tried only after a back-off, RETRIES times in a row at most."""
    if endpoint is None:
        return False
    failures, retry_at = _failures.get(endpoint, (0, 0.0))
    if failures >= RETRIES or time.monotonic() < retry_at:
        return False
    for _ in range(2):  # a cached connection may be stale (its server is gone): retry once on a fresh one
        conn = _connections.get(endpoint)
        fresh = conn is None
        try:
            if fresh:
                for other in list(_connections):  # one run at a time: drop connections to older servers
                    _connections.pop(other).close()
                conn = socket.create_connection((endpoint.host, endpoint.port), timeout=TIMEOUT_SECONDS)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.sendall(endpoint.token)
                _connections[endpoint] = conn
            conn.sendall(b"?")
            reply = b""
            while len(reply) < _REPLY.size:
                chunk = conn.recv(_REPLY.size - len(reply))
                if not chunk:
                    raise ConnectionError("the step signal server closed the connection")
                reply += chunk
            if failures:
                log.warning("step signal at %s:%s reachable again", endpoint.host, endpoint.port)
            _failures.pop(endpoint, None)
            return _REPLY.unpack(reply)[0] >= step
        except OSError as e:
            _connections.pop(endpoint, None)
            if conn is not None:
                conn.close()
            if fresh:
                failures += 1
                backoff = min(FIRST_BACKOFF_SECONDS * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)
                _failures[endpoint] = (failures, time.monotonic() + backoff)
                then = f"next in {backoff:g} s" if failures < RETRIES else "late tasks now wait for Spark's cancel"
                log.warning("step signal at %s:%s unreachable (%s), attempt %d of %d; %s", endpoint.host,
                            endpoint.port, e, failures, RETRIES, then)
                return False
    return False

"""The driver's side of the step signal (protocol and task side: ``wire.step_signal``): it serves a backup step's
tasks the newest closed step, and takes their gradients. No pyspark import.

A task asks before each batch (and during an injected delay) and stops by itself when its step is closed, keeping
its Python worker; Spark's cancel is the fallback (README, "Backup workers"). A task that finished pushes its
gradient here, so that only a note of it travels through Spark's accumulator: a gradient inside an accumulator
update stays in the executor's JVM (in local mode the driver's) after the task ends, held by the task's context
until Spark's Python-worker monitor thread next polls, every 2 s (docs: "Driver memory").
"""
from __future__ import annotations

import hmac
import logging
import resource
import secrets
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mnist_lenet_spark.config import ConfigError
from mnist_lenet_spark.wire.common import TOKEN_BYTES, Endpoint, listen
from mnist_lenet_spark.wire.step_signal import PUSH, REPLY

log = logging.getLogger(__name__)
#: the driver's side of a push: (step, shard, gradient sum (P,), loss sum, example count) -> kept?
PushHandler = Callable[[int, int, np.ndarray, float, int], bool]
#: Spark conf key of the driver port (or ``LOW-HIGH`` range) the service listens on; default: any free port
PORT_CONF = "spark.mnistLenet.stepSignal.port"


def parse_ports(value: str | None) -> range:
    """``PORT_CONF``'s value as the ports to try: "0" or unset: any free one; "7100"; "7100-7110"."""
    text = (value or "0").strip()
    try:
        low, _, high = text.partition("-")
        low, high = int(low), int(high or low)
    except ValueError:
        raise ConfigError(f"{PORT_CONF}: expected a port or LOW-HIGH, got {text!r}") from None
    if not (0 <= low <= high <= 65535) or (low == 0 and high != 0):
        raise ConfigError(f"{PORT_CONF}: expected ports in 1..65535 (LOW <= HIGH) or 0, got {text!r}")
    return range(low, high + 1)


def driver_address(conf) -> tuple[str, str, range]:
    """(address to listen on, host the tasks connect to, ports) of a driver service, from a SparkConf: where Spark
    listens (``spark.driver.bindAddress``, ``spark.driver.host``) and ``PORT_CONF``. ConfigError on bad ports."""
    host = conf.get("spark.driver.host", "127.0.0.1")
    return conf.get("spark.driver.bindAddress", host), host, parse_ports(conf.get(PORT_CONF, "0"))


@dataclass
class _Client:
    since: float  # time.monotonic() of the last byte received (or of the accept)
    authenticated: bool = False
    received: bytearray = field(default_factory=bytearray)  # token bytes so far
    header: bytearray | None = None  # a push's header bytes so far, after its "G"
    push: tuple | None = None  # (step, shard, count, loss sum) of the push whose payload is arriving
    payload: np.ndarray | None = None  # where it arrives
    got: int = 0  # payload bytes so far


class StepServer:
    """Driver side: serves the number of the newest closed step to the tasks that know the token, and hands their
    pushed gradients to ``on_push`` (gradients of ``push_bytes`` bytes; without ``on_push``, a push drops its
    connection). ``bind``, ``host`` (default: ``bind``) and ``ports``: as ``driver_address`` gives them."""
    AUTH_SECONDS = 2.0  # a new connection must present the token within this
    IDLE_SECONDS = 60.0  # an authenticated connection silent this long is closed (its task reconnects)

    def __init__(self, bind: str = "127.0.0.1", host: str | None = None, max_connections: int | None = None,
                 ports: range = range(0, 1), token: bytes | None = None, on_push: PushHandler | None = None,
                 push_bytes: int = 0):
        self.closed_step = -1
        self.on_push, self.push_bytes = on_push, push_bytes
        self.pushes = 0  # gradients received whole
        self.token = token or secrets.token_bytes(TOKEN_BYTES)
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        # a quarter of the descriptors at most: the driver needs the rest (Py4J, broadcasts, files)
        self.max_connections = max_connections or max(4, min(256, soft_limit // 4))
        self.dropped = 0  # connections closed for too many, no or a wrong token, idleness, or not reading
        self._listener = listen(bind, ports)
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
            if client.payload is not None:  # straight into the gradient's array
                view = memoryview(client.payload).cast("B")
                count, data = conn.recv_into(view[client.got:]), None
            else:
                data = conn.recv(256)
                count = len(data)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            count = 0
        if not count:
            return self._drop(conn, counted=False)
        client.since = now
        if data is None:
            client.got += count
            if client.got == client.payload.nbytes:
                self._deliver(conn, client)
            return
        if not client.authenticated:
            client.received += data
            if len(client.received) < TOKEN_BYTES:
                return
            if not hmac.compare_digest(bytes(client.received[:TOKEN_BYTES]), self.token):
                return self._drop(conn)
            client.authenticated = True
            data = bytes(client.received[TOKEN_BYTES:])
            client.received = bytearray()
        self._messages(conn, client, data)

    def _messages(self, conn: socket.socket, client: _Client, data: bytes) -> None:
        """Questions and pushes in ``data``: one answer for all the questions of one read (a flood of them costs
        one reply), one for each push."""
        asked = False
        while data and conn in self._clients:
            if client.payload is not None:  # a push's first payload bytes came with its header
                view = memoryview(client.payload).cast("B")
                take = min(len(data), client.payload.nbytes - client.got)
                view[client.got:client.got + take] = data[:take]
                client.got, data = client.got + take, data[take:]
                if client.got == client.payload.nbytes:
                    self._deliver(conn, client)
            elif client.header is not None:
                take = PUSH.size - len(client.header)
                client.header += data[:take]
                data = data[take:]
                if len(client.header) == PUSH.size:
                    self._start_push(conn, client)
            elif data[:1] == b"G":
                client.header, data = bytearray(), data[1:]
            else:
                questions = len(data) - len(data.lstrip(b"?"))
                if not questions:  # neither a question nor a push
                    return self._drop(conn)
                asked, data = True, data[questions:]
        if asked and conn in self._clients:
            self._reply(conn, self.closed_step)

    def _start_push(self, conn: socket.socket, client: _Client) -> None:
        step, shard, count, loss_sum, width, size = PUSH.unpack(bytes(client.header))
        client.header = None
        if self.on_push is None or width not in (4, 8) or size != self.push_bytes or size % width:
            log.warning("step signal: a push of %d bytes of %d-byte floats refused (expected %d bytes)", size, width,
                        self.push_bytes)
            return self._drop(conn)
        client.push = (step, shard, count, loss_sum)
        client.payload, client.got = np.empty(size // width, np.float32 if width == 4 else np.float64), 0

    def _deliver(self, conn: socket.socket, client: _Client) -> None:
        (step, shard, count, loss_sum), grad = client.push, client.payload
        client.push, client.payload, client.got = None, None, 0
        self.pushes += 1
        self._reply(conn, 1 if self.on_push(step, shard, grad, loss_sum, count) else 0)

    def _reply(self, conn: socket.socket, value: int) -> None:
        try:
            conn.send(REPLY.pack(value))
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

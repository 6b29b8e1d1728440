"""The driver's coordinator of parameter versions (protocol and client: ``wire.parameters``), with two policies:
- asynchronous (Downpour-style, ``async_sgd``): ONE apply thread applies every push as it arrives (the ``apply``
  function given: SGD-Nesterov, L2, batch norm's running statistics, as the synchronous update) and publishes the next
  version; staleness is the number of versions applied between a push's pull and its apply;
- synchronous (the one-job engine, ``keep`` = N): the driver's loop publishes each version and takes the sum of its
  first N pushes (TensorFlow's SyncReplicasOptimizer with backup workers); a later push of that version is refused
  as late, and its task pulls the next version at once.
Every read has a deadline; the connections are bounded (``max_clients``); no pyspark import.
"""
from __future__ import annotations

import contextlib
import hmac
import logging
import queue
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mnist_lenet_spark.data import DataError
from mnist_lenet_spark.loop.sums import GradientSum
from mnist_lenet_spark.wire.common import TOKEN_BYTES, Endpoint, listen, recv_exact
from mnist_lenet_spark.wire.parameters import (AFTER, AGAIN, ANSWER, APPLIED, BUDGET, FAIL, FAIL_HEADER, FAILED, GO,
                                               HELLO, KEPT, LATE, OLD_ATTEMPT, PULL, PUSH, PUSH_HEADER, REPLY_SECONDS,
                                               STALE, STATUS_NAMES, STOP, VERSION, WAIT_SECONDS, WELCOME, WIRE,
                                               to_wire)

log = logging.getLogger(__name__)
#: apply(gradient sum (P,), loss sum, example count, staleness, partition, params (P,)) -> next params (P,)
Apply = Callable[[np.ndarray, float, int, int, int, np.ndarray], np.ndarray]


@dataclass
class _Push:
    grad: np.ndarray
    loss_sum: float
    count: int
    pulled: int  # the version the gradient was computed at
    partition: int
    attempt: int
    done: threading.Event = field(default_factory=threading.Event)
    status: int = FAILED


class ParameterServer:
    """Driver side: serves ``params`` (P,) float32 and their version to ``partitions`` tasks that know the token, and
    applies their pushes in one thread with ``apply`` until ``budget`` updates are applied (``done`` is set then, or
    when the run stops on an error: ``error``). ``max_staleness``: refuse pushes more versions behind (None: off).
    ``bind``/``host``/``ports`` as ``step_signal.StepServer``'s. A resumed run starts at ``version`` (updates applied
    before; ``budget`` counts them too) with each partition's ``positions``. ``after_apply(version, positions)`` runs in
    the apply thread after each update is published (checkpoints); if it raises, the run stops with that error.

    ``keep`` = N makes it synchronous: ``apply`` is not used; the driver ``publish``es each version and ``take``s the
    sum of its first N pushes. A task's ``FAIL`` message (a bad row) stops the run with a DataError."""
    AUTH_SECONDS = 2.0  # a new connection must present the token and its hello within this
    IDLE_SECONDS = 600.0  # a task silent this long between messages (a gradient, with any injected delay) is dropped
    PAYLOAD_SECONDS = 60.0  # a push's gradient must arrive within this after its header
    MAX_FAILURE_BYTES = 64 << 10

    def __init__(self, params: np.ndarray, apply: Apply, budget: int, partitions: int, *, bind: str = "127.0.0.1",
                 host: str | None = None, ports: range = range(0, 1), token: bytes | None = None,
                 max_clients: int | None = None, max_staleness: int | None = None, version: int = 0,
                 positions: dict[int, int] | None = None,
                 after_apply: Callable[[int, dict[int, int]], None] | None = None, keep: int | None = None):
        self.params = np.ascontiguousarray(params, np.float32)  # published: never written in place
        self.apply, self.budget, self.partitions = apply, budget, partitions
        self.max_staleness, self.after_apply = max_staleness, after_apply
        self.version = version  # updates applied (a resumed run's count goes on)
        self.token = token or secrets.token_bytes(TOKEN_BYTES)
        self.max_clients = max_clients or max(4, 2 * partitions + 2)
        self.newest_attempt: dict[int, int] = {}
        # mini-batches each partition pushed (applied, or refused as too stale), over its attempts
        self.positions: dict[int, int] = dict(positions or {})
        self.refused = {name: 0 for code, name in STATUS_NAMES.items() if code != APPLIED}
        self.dropped = 0  # connections closed for too many, a wrong token, a bad message, or idleness
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.last_progress = time.monotonic()
        self._stopped = False
        self._queued = 0  # pushes accepted, not applied yet (they count against the budget)
        self._lock = threading.Lock()
        self._new_version = threading.Condition(self._lock)  # synchronous pulls wait on it
        self.keep = keep
        self.kept = threading.Event()  # synchronous: the published version has its ``keep`` pushes
        self._sums: GradientSum | None = None  # synchronous: the running sum of the published version's kept pushes
        self._kept_shards: list[int] = []
        self._queue: queue.Queue[_Push] = queue.Queue()
        self._clients: dict[socket.socket, threading.Thread] = {}
        self._closing = threading.Event()
        self._listener = listen(bind, ports)
        self._listener.settimeout(0.2)
        self.endpoint = Endpoint(host or bind, self._listener.getsockname()[1], self.token)
        self._threads = [threading.Thread(target=self._accept, name="async-accept", daemon=True),
                         threading.Thread(target=self._apply_loop, name="async-apply", daemon=True)]
        for thread in self._threads:
            thread.start()
        if budget <= version:
            self.done.set()

    @property
    def applied(self) -> int:
        return self.version

    def stop(self, error: BaseException | None = None) -> None:
        """From now on every pull answers stop and every push is refused; ``error`` (the first) ends the fit."""
        with self._lock:
            self._stopped = True
            if error is not None and self.error is None:
                self.error = error
            self._new_version.notify_all()
        self.done.set()

    def publish(self, version: int, params: np.ndarray) -> None:
        """Synchronous: serve ``params`` (P,) as ``version``; from now on its first ``keep`` pushes are summed."""
        with self._lock:
            self.params, self.version = np.ascontiguousarray(params, np.float32), version
            self._sums, self._kept_shards = None, []
            self.kept.clear()
            self._new_version.notify_all()

    def take(self) -> tuple[GradientSum, list[int]]:
        """Synchronous, once ``kept`` is set: (the sum of the published version's first ``keep`` pushes, their
        partitions in the order they arrived)."""
        with self._lock:
            return self._sums, list(self._kept_shards)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop, close every connection and wait (bounded) for the service's threads."""
        self.stop()
        self._closing.set()
        for thread in self._threads:
            thread.join(timeout)
        with self._lock:
            clients = list(self._clients.items())
        for conn, _ in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _, thread in clients:
            thread.join(timeout)
        self._listener.close()
        while True:  # nobody applies them now: their connections are closed anyway
            try:
                self._queue.get_nowait().done.set()
            except queue.Empty:
                break

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._closing.is_set():
                    return
                log.exception("async service: accept failed; serving on")
                time.sleep(0.1)
                continue
            with self._lock:
                full = len(self._clients) >= self.max_clients
                if not full:
                    thread = threading.Thread(target=self._serve, args=(conn,), name="async-client", daemon=True)
                    self._clients[conn] = thread
            if full:
                log.warning("async service: %d connections already; one more refused", self.max_clients)
                self.dropped += 1
                conn.close()
                continue
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        authenticated = False
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.monotonic() + self.AUTH_SECONDS
            token = recv_exact(conn, TOKEN_BYTES, deadline)
            if not hmac.compare_digest(token, self.token):
                log.warning("async service: a connection with a wrong token dropped")
                self.dropped += 1
                return
            authenticated = True
            partition, attempt = HELLO.unpack(recv_exact(conn, HELLO.size, deadline))
            if not 0 <= partition < self.partitions or attempt < 0:
                log.warning("async service: a hello for partition %d attempt %d dropped", partition, attempt)
                self.dropped += 1
                return
            with self._lock:
                accepted = attempt >= self.newest_attempt.get(partition, -1)
                if accepted:
                    self.newest_attempt[partition] = attempt
                position = self.positions.get(partition, 0)
            conn.sendall(WELCOME.pack(int(accepted), position, self.params.size))
            if not accepted:
                self._count_refusal(OLD_ATTEMPT, partition)
                return
            log.info("async service: partition %d attempt %d connected at mini-batch %d", partition, attempt, position)
            while not self._closing.is_set():
                kind = recv_exact(conn, 1, time.monotonic() + self.IDLE_SECONDS)
                if kind == PULL:
                    self._pull(conn)
                elif kind == PUSH:
                    self._push(conn, partition, attempt)
                elif kind == VERSION:
                    conn.sendall(ANSWER.pack(0, self.version))
                elif kind == FAIL:
                    self._fail(conn, partition)
                    return
                else:
                    log.warning("async service: partition %d sent an unknown message %r; dropped", partition, kind)
                    self.dropped += 1
                    return
        except (OSError, struct.error) as e:  # gone, timed out, or shut down
            if not authenticated:
                self.dropped += 1  # no token in time
            elif not self._closing.is_set():
                log.debug("async service: a connection ended: %s", e)
        except Exception:  # never let a client take the service down
            log.exception("async service: unexpected error on a connection")
        finally:
            conn.close()
            with self._lock:
                self._clients.pop(conn, None)

    def _pull(self, conn: socket.socket) -> None:
        (after,) = AFTER.unpack(recv_exact(conn, AFTER.size, time.monotonic() + self.PAYLOAD_SECONDS))
        with self._new_version:  # a synchronous task waits (bounded) for the next version
            self._new_version.wait_for(lambda: self._stopped or self.version > after, WAIT_SECONDS)
            if self._stopped or self.version >= self.budget:
                go = STOP
            else:
                go = GO if self.version > after else AGAIN
            version, params = self.version, self.params
        conn.sendall(ANSWER.pack(go, version))
        if go == GO:
            conn.sendall(to_wire(params))

    def _fail(self, conn: socket.socket, partition: int) -> None:
        (size,) = FAIL_HEADER.unpack(recv_exact(conn, FAIL_HEADER.size, time.monotonic() + self.PAYLOAD_SECONDS))
        if size > self.MAX_FAILURE_BYTES:
            raise ConnectionError(f"a failure of {size} bytes")
        text = recv_exact(conn, size, time.monotonic() + self.PAYLOAD_SECONDS).decode(errors="replace")
        log.error("coordinator: partition %d cannot train: %s", partition, text)
        self.stop(DataError(text))

    def _push(self, conn: socket.socket, partition: int, attempt: int) -> None:
        pulled, count, loss_sum, size = PUSH_HEADER.unpack(recv_exact(conn, PUSH_HEADER.size,
                                                                time.monotonic() + self.PAYLOAD_SECONDS))
        if size != self.params.size * WIRE.itemsize:
            log.warning("async service: a push of %d bytes refused (expected %d); dropped", size,
                        self.params.size * WIRE.itemsize)
            raise ConnectionError("bad push size")
        grad = np.empty(self.params.size, WIRE)
        recv_exact(conn, size, time.monotonic() + self.PAYLOAD_SECONDS, into=grad)
        item = _Push(grad.astype(np.float32, copy=False), loss_sum, count, pulled, partition, attempt)
        if self.keep is not None:
            status = self._keep(item)
            if status != KEPT:
                self._count_refusal(status, partition)
            conn.sendall(ANSWER.pack(status, self.version))
            return
        with self._lock:
            status = self._admit(item)
            if status == APPLIED:
                self._queued += 1
                self._queue.put(item)
        if status == APPLIED:  # queued: wait for the apply thread's verdict
            if not item.done.wait(REPLY_SECONDS):
                raise TimeoutError("the apply thread did not answer")
            status = item.status
        if status != APPLIED:
            self._count_refusal(status, partition)
        conn.sendall(ANSWER.pack(status, self.version))

    def _admit(self, item: _Push) -> int:
        """Under the lock: whether a push may join the queue (APPLIED) or why not."""
        if item.attempt < self.newest_attempt.get(item.partition, -1):
            return OLD_ATTEMPT
        if self._stopped or self.version + self._queued >= self.budget:
            return BUDGET
        return APPLIED

    def _keep(self, item: _Push) -> int:
        """Synchronous: add a push to its version's sum if it is among the first ``keep``, or say why not."""
        with self._lock:
            if item.attempt < self.newest_attempt.get(item.partition, -1):
                return OLD_ATTEMPT
            if self._stopped:
                return BUDGET
            if item.pulled != self.version or len(self._kept_shards) >= self.keep:
                return LATE
            sums = GradientSum(item.grad, item.loss_sum, item.count)
            self._sums = sums if self._sums is None else self._sums + sums
            self._kept_shards.append(item.partition)
            self.positions[item.partition] = self.positions.get(item.partition, 0) + 1
            self.last_progress = time.monotonic()
            if len(self._kept_shards) == self.keep:
                self.kept.set()
            return KEPT

    def _count_refusal(self, status: int, partition: int) -> None:
        with self._lock:
            self.refused[STATUS_NAMES[status]] += 1
            if status == STALE:
                self.positions[partition] = self.positions.get(partition, 0) + 1

    def _apply_loop(self) -> None:
        while not self._closing.is_set():
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                item.status = self._apply_one(item)
            except Exception as e:  # a diverged update, a failing on_step: the run stops with it
                log.error("async service: the update failed: %s", e)
                item.status = FAILED
                self.stop(e)
            finally:
                with self._lock:
                    self._queued -= 1
                item.done.set()

    def _apply_one(self, item: _Push) -> int:
        with self._lock:
            if item.attempt < self.newest_attempt.get(item.partition, -1):
                return OLD_ATTEMPT  # superseded while it waited
            if self._stopped:
                return BUDGET
            version, params = self.version, self.params
        staleness = version - item.pulled
        if self.max_staleness is not None and staleness > self.max_staleness:
            return STALE
        new = self.apply(item.grad, item.loss_sum, item.count, staleness, item.partition, params)
        with self._lock:  # only this thread writes params and version
            self.params, self.version = np.ascontiguousarray(new, np.float32), version + 1
            self.positions[item.partition] = self.positions.get(item.partition, 0) + 1
            self.last_progress = time.monotonic()
            positions = dict(self.positions)
        if self.after_apply is not None:  # before done is set: the driver's final checkpoint comes after it
            self.after_apply(version + 1, positions)
        if version + 1 >= self.budget:
            self.done.set()
        return APPLIED

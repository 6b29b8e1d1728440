"""The protocol of the coordinator of parameter versions (the server: ``cluster.async_service``) and its task-side
client, for the asynchronous mode (Downpour-style, ``async_sgd``) and the one-job engine's synchronous mode. Each of
the job's long tasks keeps one connection and loops: pull the parameters and their version, compute the gradient of
a mini-batch, push it with the version it used.

Protocol (TCP; headers big-endian; every float is a little-endian float32, never pickle):
- hello: the fit's 32-byte token (``wire.common``) + ``HELLO`` (partition, attempt number). A wrong token closes
  the connection with nothing sent; otherwise ``WELCOME`` (accepted, position, parameter count): refused (0, then
  closed) when a newer attempt of the partition has said hello; ``position`` is how many mini-batches the
  partition's attempts have pushed, so a retried attempt goes on from there.
- ``P`` + ``AFTER`` (a version, -1 for any): ``ANSWER`` (go, version), then, when go = 1, the parameters of a version
  newer than the one given. go = 0: the run's budget is spent (or the driver stopped it): the task ends; go = 2:
  no newer version yet (the synchronous mode's wait is bounded by ``WAIT_SECONDS``): pull again.
- ``G`` + ``PUSH_HEADER`` (version pulled, example count, loss sum, payload bytes) + the gradient sum (its state
  slots hold the summed batch statistics, as the synchronous tasks' sums do): ``ANSWER`` (status, version) once the
  apply thread has applied it (APPLIED) or refused it (OLD_ATTEMPT: a newer attempt of the partition said hello;
  BUDGET: the run's budget is spent; STALE: more than ``max_staleness`` versions behind; FAILED: the update
  failed, the run stops; synchronous: KEPT: one of the first N of its version, LATE: its version had its N).
  A payload of another size than the parameters' drops the connection.
- ``V``: ``ANSWER`` (0, the newest version): a synchronous task asks it while it waits or computes, to give up a
  version that has closed.
- ``E`` + ``FAIL_HEADER`` (bytes) + UTF-8 text: the task's data cannot train (a bad row): the run fails with it.
Every read has a deadline. No pyspark import."""
from __future__ import annotations

import logging
import socket
import struct
import time

import numpy as np

from mnist_lenet_spark.wire.common import Endpoint, recv_exact

log = logging.getLogger(__name__)
WIRE = np.dtype("<f4")
HELLO = struct.Struct("!ii")  # partition, attempt number
WELCOME = struct.Struct("!BqQ")  # accepted, position (mini-batches the partition pushed), parameter count
ANSWER = struct.Struct("!Bq")  # go / status, version
PUSH_HEADER = struct.Struct("!qqdQ")  # version pulled, example count, loss sum, payload bytes
AFTER = struct.Struct("!q")  # a pull wants a version newer than this (-1: any)
FAIL_HEADER = struct.Struct("!I")  # bytes of the failure's text
PULL, PUSH, FAIL, VERSION = b"P", b"G", b"E", b"V"
STOP, GO, AGAIN = 0, 1, 2  # a pull's answers
APPLIED, OLD_ATTEMPT, BUDGET, STALE, FAILED, LATE = 1, 2, 3, 4, 5, 6
KEPT = APPLIED  # synchronous: one of the first N pushes of its version
STATUS_NAMES = {APPLIED: "applied", OLD_ATTEMPT: "old attempt", BUDGET: "budget spent", STALE: "too stale",
                FAILED: "update failed", LATE: "late"}
WAIT_SECONDS = 5.0  # the longest a synchronous pull waits for a new version before it is answered AGAIN
WAIT_LIMIT_SECONDS = 900.0  # a task gives up when no new version comes in this long (the driver stalls sooner)
CONNECT_SECONDS = 10.0  # a task's connect and hello
REPLY_SECONDS = 120.0  # a task's wait for a pull's parameters or a push's answer (it waits for the apply)
CONNECT_TRIES, FIRST_BACKOFF_SECONDS = 5, 0.5


def to_wire(values: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(values, WIRE)).cast("B")


class AsyncClient:
    """Task side: one authenticated connection to the parameter service for one task attempt. ``accepted`` is False
    when a newer attempt of the partition has said hello (this one must end); ``position``: how many mini-batches the
    partition has pushed before (a retried attempt goes on from there). A failure to connect (CONNECT_TRIES tries,
    with back-off) or any broken exchange raises OSError."""

    def __init__(self, endpoint: Endpoint, partition: int, attempt: int):
        error = None
        for tries in range(CONNECT_TRIES):
            if tries:
                time.sleep(FIRST_BACKOFF_SECONDS * 2 ** (tries - 1))
            try:
                self.conn = socket.create_connection((endpoint.host, endpoint.port), timeout=CONNECT_SECONDS)
                break
            except OSError as e:
                error = e
                log.warning("async service at %s:%s unreachable (%s), try %d of %d", endpoint.host, endpoint.port,
                            e, tries + 1, CONNECT_TRIES)
        else:
            raise ConnectionError(f"async service at {endpoint.host}:{endpoint.port} unreachable: {error}")
        try:
            self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conn.sendall(endpoint.token + HELLO.pack(partition, attempt))
            accepted, self.position, self.size = WELCOME.unpack(
                recv_exact(self.conn, WELCOME.size, time.monotonic() + CONNECT_SECONDS))
        except BaseException:
            self.conn.close()
            raise
        self.accepted = bool(accepted)

    def pull(self, after: int = -1) -> tuple[bool, int, np.ndarray | None]:
        """(go on?, version, parameters (P,) float32 or None when told to stop) of a version newer than ``after``;
        TimeoutError when none comes within WAIT_LIMIT_SECONDS."""
        limit = time.monotonic() + WAIT_LIMIT_SECONDS
        while True:
            self.conn.sendall(PULL + AFTER.pack(after))
            deadline = time.monotonic() + REPLY_SECONDS
            go, version = ANSWER.unpack(recv_exact(self.conn, ANSWER.size, deadline))
            if go != AGAIN:
                break
            if time.monotonic() > limit:
                raise TimeoutError(f"no version after {after} in {WAIT_LIMIT_SECONDS:g} s")
        if go == STOP:
            return False, version, None
        params = np.empty(self.size, WIRE)
        recv_exact(self.conn, params.nbytes, deadline, into=params)
        return True, version, params.astype(np.float32, copy=False)

    def push(self, version: int, grad_sum: np.ndarray, loss_sum: float, count: int) -> tuple[int, int]:
        """Send a gradient sum (P,) computed at ``version``: (status, the service's version after it)."""
        payload = to_wire(grad_sum)
        self.conn.sendall(PUSH + PUSH_HEADER.pack(version, count, loss_sum, payload.nbytes))
        self.conn.sendall(payload)
        return ANSWER.unpack(recv_exact(self.conn, ANSWER.size, time.monotonic() + REPLY_SECONDS))

    def version(self) -> int:
        """The coordinator's newest version."""
        self.conn.sendall(VERSION)
        return ANSWER.unpack(recv_exact(self.conn, ANSWER.size, time.monotonic() + REPLY_SECONDS))[1]

    def fail(self, problem: str) -> None:
        """Tell the coordinator that this task's data cannot train (``problem``: one line); the run fails with it."""
        text = problem.encode()
        self.conn.sendall(FAIL + FAIL_HEADER.pack(len(text)) + text)

    def close(self) -> None:
        self.conn.close()

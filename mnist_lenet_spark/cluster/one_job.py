"""The one-job engine, driver side: a fit is one Spark job of long-lived tasks (``executor.one_job``), written with
DataFrame operations only, so it runs on a classic session and on Spark Connect alike (no SparkContext, no RDD).

``shard_frame`` cuts the training DataFrame into its shards as staging does (row ``i`` of the frame's order goes to
shard ``k`` when ``edges[k] <= i < edges[k + 1]``), one shard per partition; ``OneJob`` runs ``mapInArrow`` over it
in a thread, tagged so that it can be interrupted, and watches it: every shard must say hello to the coordinator
within ``start_seconds`` (else too few task slots: one line naming both numbers), the run fails when the job ends
early or nothing arrives for ``stall_seconds``.
"""
from __future__ import annotations

import dataclasses
import hmac
import logging
import os
import pickle
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator

import numpy as np

from mnist_lenet_spark.cluster import step_signal, task_errors
from mnist_lenet_spark.cluster.async_service import ParameterServer
from mnist_lenet_spark.config import ConfigError
from mnist_lenet_spark.data import DataError
from mnist_lenet_spark.executor import one_job, tasks
from mnist_lenet_spark.executor.async_task import AsyncReport
from mnist_lenet_spark.loop import sharding
from mnist_lenet_spark.wire.common import TOKEN_BYTES, Endpoint, listen, recv_exact

log = logging.getLogger(__name__)
POLL_SECONDS = 0.01
#: the host the executors reach this process at, when it is not Spark's driver (a Spark Connect client)
COORDINATOR_HOST_CONF = "spark.mnistLenet.coordinator.host"
COORDINATOR_PLACES = ("auto", "client", "cluster")  # where the coordinator runs: see ``place_of``
CLUSTER_SCHEMA = one_job.REPORT_SCHEMA + ", outcome binary"  # a barrier job's rows: the coordinator's has the outcome
HASH_TRIES = 64  # candidate keys per shard when looking for keys that Spark's hash partitioning sends home


def is_connect(spark) -> bool:
    """Whether ``spark`` is a Spark Connect session (no SparkContext behind it)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def arrow_features(df, column: str):
    """``df``'s features column as Arrow carries it: a Vector column as an array (Arrow has no type for Vectors)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    if isinstance(df.schema[column].dataType, VectorUDT):
        return vector_to_array(F.col(column))
    return F.col(column)


def shard_frame(df, features_col: str, label_col: str, shards: int, spare: int = 0):
    """(frame, rows): ``df``'s rows with their row number (``one_job.ROW``), features (Vectors as arrays: Arrow has
    no type for them) and label, in ``shards`` + ``spare`` partitions, partition k < shards holding exactly shard k's
    rows (the spare ones: none). Two small jobs: the rows of each input partition, and Spark's own hash of candidate
    keys."""
    from pyspark.sql import functions as F
    numbered = df.select(arrow_features(df, features_col).alias(features_col), F.col(label_col),
                         F.monotonically_increasing_id().alias("_id"))  # (input partition << 33) + position in it
    partition = F.shiftright(F.col("_id"), 33)
    counts = dict(numbered.groupBy(partition.alias("p")).count().collect())
    rows = int(sum(counts.values()))
    if rows < shards:
        raise DataError(f"{shards} shards need at least {shards} rows, the DataFrame has {rows}")
    first, offsets = 0, []  # offsets[p]: the row number of input partition p's first row
    for p in range(max(counts) + 1):
        offsets.append(first)
        first += counts.get(p, 0)
    row = (F.element_at(F.array(*[F.lit(o) for o in offsets]), (partition + 1).cast("int"))
           + F.col("_id").bitwiseAND(F.lit((1 << 33) - 1)))
    edges = [a for a, _ in sharding.shard_bounds(rows, shards)][1:]
    shard = sum((F.col(one_job.ROW) >= F.lit(e)).cast("int") for e in edges) if edges else F.lit(0)
    keys = F.array(*[F.lit(k) for k in _home_keys(df.sparkSession, shards + spare)[:shards]])
    frame = (numbered.select(row.alias(one_job.ROW), F.col(features_col), F.col(label_col))
             .withColumn("_key", F.element_at(keys, (shard + 1).cast("int")).cast("long"))  # hashed as the ids were
             .repartition(shards + spare, "_key").drop("_key"))
    return frame, rows


def frame_of(spark, images, labels):
    """A DataFrame of uint8 ``images`` (N, ...) as 'features' binaries and ``labels`` (N,) as 'label', in the arrays'
    order (so shard k holds the rows the per-step engine's shard k indexes), sent through Arrow."""
    import pyarrow as pa
    pixels = np.ascontiguousarray(images).reshape(len(images), -1)  # (N, C*H*W) uint8
    features = pa.FixedSizeBinaryArray.from_buffers(pa.binary(pixels.shape[1]), len(pixels),
                                                    [None, pa.py_buffer(pixels)]).cast(pa.binary())
    return spark.createDataFrame(pa.table({"features": features, "label": np.asarray(labels, np.int64)}))


def collect_rows(df, plan: one_job.JobPlan) -> tuple:
    """(uint8 images (n, C, H, W), labels (n,)) of ``df``'s rows, brought to this process (Arrow); DataError naming
    the first bad row."""
    from pyspark.sql import functions as F
    table = df.select(arrow_features(df, plan.features_col).alias(plan.features_col), F.col(plan.label_col)).toArrow()
    arrays = one_job.table_arrays(plan, table, range(table.num_rows))
    if isinstance(arrays, str):
        raise DataError(f"validation {arrays}")
    return arrays


def coordinator_address(spark) -> tuple[str, str, range]:
    """(address to listen on, host the tasks connect to, ports) of the coordinator in this process: Spark's driver's
    (``step_signal.driver_address``) on a classic session; on Spark Connect this process is not the driver, so
    COORDINATOR_HOST_CONF or this machine's address, listening on every interface."""
    bind, host, ports = step_signal.driver_address(spark.conf)
    given = spark.conf.get(COORDINATOR_HOST_CONF, None)
    if is_connect(spark):
        return "0.0.0.0", given or socket.gethostbyname(socket.gethostname()), ports
    return bind, given or host, ports


def _home_keys(spark, shards: int) -> list[int]:
    """keys[k]: a long that ``repartition(shards, key)`` sends to partition k (Spark's Murmur3 ``hash`` mod
    ``shards``, computed by Spark itself)."""
    from pyspark.sql import functions as F
    found = dict(spark.range(0, HASH_TRIES * shards)
                 .select(F.pmod(F.hash("id"), F.lit(shards)).alias("p"), "id")
                 .groupBy("p").agg(F.min("id")).collect())
    if len(found) < shards:
        raise RuntimeError(f"no key found for {shards - len(found)} of {shards} partitions")
    return [int(found[k]) for k in range(shards)]


@dataclass(frozen=True)
class Coordination:
    """The coordinator's side of a fit, wherever it runs (this process, or the job's coordinator task): a
    ``ParameterServer`` made with ``options`` (all but where it listens and its token), driven to the run's end by
    ``run(server, check) -> value``; ``check()`` raises the run's error (the server's, a stall, the job's). Picklable:
    in the cluster it travels in the job's closure."""
    options: dict
    run: Callable


@dataclass
class Outcome:
    """What a coordinator leaves behind: its run's value and the server's counts (the names ``ParameterServer``
    has, so that code reading either takes both)."""
    value: Any
    applied: int
    budget: int
    refused: dict
    positions: dict
    error: BaseException | None

    @classmethod
    def of(cls, server: ParameterServer, value: Any) -> "Outcome":
        return cls(value, server.applied, server.budget, dict(server.refused), dict(server.positions), server.error)


def kept_sum(server: ParameterServer, check: Callable[[], None], shards: int, flat: np.ndarray, batches):
    """One synchronous step (``training.Gradient``) against a coordinator with ``keep`` = N: publish the version,
    wait for its first N pushes, take their sum."""
    t0 = time.perf_counter()
    server.publish(batches[0].key.step, flat)
    while not server.kept.wait(POLL_SECONDS):
        check()
    sums, kept = server.take()
    return sums, {"step_seconds": time.perf_counter() - t0, "kept": kept,
                  "dropped": sorted(set(range(shards)) - set(kept))}


def server_check(server: ParameterServer, stall_seconds: float) -> None:
    """Raise the coordinator's error, or a StepFailure when nothing arrived for ``stall_seconds``."""
    if server.error is not None:
        raise server.error
    if time.monotonic() - server.last_progress > stall_seconds:
        raise task_errors.StepFailure(f"the training job stalled: nothing arrived in {stall_seconds:g} s "
                                      f"(at version {server.version})")


def task_slots(spark) -> int:
    """Tasks the session's cluster runs at once now: its default parallelism (the cores of the registered executors)
    over ``spark.task.cpus``; on Spark Connect read as the partitions ``spark.range`` gets by default (a small job)."""
    from pyspark.sql import functions as F
    cpus = int(spark.conf.get("spark.task.cpus", "1"))
    if is_connect(spark):
        cores = spark.range(0, 100_000).select(F.spark_partition_id().alias("p")).distinct().count()
    else:
        cores = spark.sparkContext.defaultParallelism
    return max(cores // max(cpus, 1), 1)


def place_of(spark, coordinator: str) -> str:
    """Where the coordinator of a fit on ``spark`` runs (COORDINATOR_PLACES): as asked, or for 'auto' this process
    unless it is a Spark Connect client that the executors cannot reach (``reachable``)."""
    if coordinator not in COORDINATOR_PLACES:
        raise ConfigError(f"coordinator: must be one of {', '.join(COORDINATOR_PLACES)}, got {coordinator!r}")
    if coordinator != "auto":
        return coordinator
    if not is_connect(spark):
        return "client"  # the executors reach the driver: Spark itself needs them to
    problem = reachable(spark)
    if problem is None:
        return "client"
    log.info("one-job engine: the executors cannot reach this process (%s); the coordinator runs in the cluster",
             problem)
    return "cluster"


def reachable(spark, seconds: float = 5.0) -> str | None:
    """None when a task reaches this process at ``coordinator_address`` within ``seconds``, else why not. The task
    presents a fresh token, checked here, and is answered "ok"."""
    bind, host, ports = coordinator_address(spark)
    token = secrets.token_bytes(TOKEN_BYTES)
    listener = listen(bind, ports)
    listener.settimeout(seconds + 5.0)

    def answer():
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(seconds)
                if hmac.compare_digest(recv_exact(conn, TOKEN_BYTES, time.monotonic() + seconds) or b"", token):
                    conn.sendall(b"ok")
        except OSError:
            pass
    thread = threading.Thread(target=answer, name="coordinator-probe", daemon=True)
    thread.start()
    try:
        endpoint = Endpoint(host, listener.getsockname()[1], token)
        [row] = spark.range(1, numPartitions=1).mapInArrow(partial(reach_task, endpoint, seconds),
                                                           "problem string").collect()
        return row["problem"]
    finally:
        listener.close()
        thread.join(seconds + 5.0)


def reach_task(endpoint: Endpoint, seconds: float, batches: Iterator) -> Iterator:
    """mapInArrow body of ``reachable``: one row, None or why ``endpoint`` did not answer."""
    import pyarrow as pa
    for _ in batches:
        pass
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=seconds) as conn:
            conn.sendall(endpoint.token)
            problem = None if recv_exact(conn, 2, time.monotonic() + seconds) == b"ok" else "no answer"
    except OSError as e:
        problem = f"{endpoint.host}:{endpoint.port}: {e}"
    yield pa.RecordBatch.from_pylist([{"problem": problem}], schema=pa.schema([("problem", pa.string())]))


class OneJob:
    """The fit's one Spark job (``job_frame``: the training frame mapped by the tasks) collected in a thread,
    tagged, watched: ``server`` is the coordinator when it is in this process (None: in the job)."""

    def __init__(self, spark, job_frame, server: ParameterServer | None, shards: int, *, start_seconds: float,
                 stall_seconds: float):
        self.spark, self.server, self.shards = spark, server, shards
        self.start_seconds, self.stall_seconds = start_seconds, stall_seconds
        self.tag = f"mnist-lenet-{uuid.uuid4().hex[:8]}"
        self.user_tags = set(spark.getTags())  # a session's tags are its thread's: the job's thread carries them on
        self.rows: list = []  # the job's rows, once it has ended
        self.failure: list[BaseException] = []
        self._job = job_frame
        self._interrupted = False
        self._thread = threading.Thread(target=self._run, name="one-job", daemon=True)
        self.started = time.monotonic()
        self._thread.start()

    @property
    def reports(self) -> list[AsyncReport]:
        """Each task attempt's report."""
        fields = {f.name for f in dataclasses.fields(AsyncReport)}
        return [AsyncReport(**{k: v for k, v in row.asDict().items() if k in fields}) for row in self.rows
                if row["shard"] >= 0]

    def _run(self) -> None:
        tags = {self.tag, *self.user_tags}
        for tag in tags:
            self.spark.addTag(tag)
        try:
            self.rows.extend(self._job.collect())
        except Exception as e:  # a cancelled job raises too
            self.failure.append(e)
        finally:
            for tag in tags:
                self.spark.removeTag(tag)

    def cancelled(self) -> bool:
        """Whether the job ended by an interrupt (ours, or the user's: ``interruptTag``, ``interruptAll``)."""
        return self._interrupted or any(word in str(e) for e in self.failure
                                        for word in ("OPERATION_CANCELED", "cancelled", "canceled"))

    def wait(self) -> None:
        """Until the job has ended (bounded only by the job: its tasks' own waits are)."""
        while self._thread.is_alive():
            self._thread.join(POLL_SECONDS * 10)

    def check(self) -> None:
        """Raise the run's error, if it has one: the coordinator's, the job's, too few tasks, or a stall."""
        server = self.server
        if server is not None and server.error is not None:
            raise server.error
        if not self._thread.is_alive():
            self.raise_input_problem()
            cause = task_errors.task_error(self.failure[0]) if self.failure else self._lost()
            raise task_errors.StepFailure(f"the training job ended at version {server.version}: {cause}")
        if len(server.newest_attempt) < self.shards and time.monotonic() - self.started > self.start_seconds:
            raise ConfigError(f"the training job needs {self.shards} task slots at once (one long task per shard); "
                              f"only {len(server.newest_attempt)} started within {self.start_seconds:g} s: give the "
                              f"job more slots, or fewer workers")
        server_check(server, self.stall_seconds)

    def _lost(self) -> str:
        lost = [r.ended for r in self.reports if r.ended not in ("budget", "superseded")]
        return lost[0] if lost else "every task ended"

    def finish(self, seconds: float) -> None:
        """Stop the coordinator (pulls answer stop: each task ends after its current mini-batch), wait up to
        ``seconds`` for the job, then interrupt it by its tag."""
        if self.server is not None:
            self.server.stop()
        self._thread.join(seconds)
        if self._thread.is_alive():
            log.warning("one-job engine: tasks still running %g s after the end; interrupting them", seconds)
            self.interrupt()
            self._thread.join(30.0)

    def raise_input_problem(self) -> None:
        """A DataError of the input rows (a column of ``images.image_features``) that failed the job, as one line."""
        problem = task_errors.input_problem(self.failure[0]) if self.failure else None
        if problem is not None:
            raise DataError(problem)

    def raise_failure(self) -> None:
        """After ``finish``: a job that failed by itself fails the fit, even after its last step."""
        self.raise_input_problem()
        if self.failure and not self._interrupted:
            raise task_errors.StepFailure(f"the training job failed: {task_errors.task_error(self.failure[0])}")

    def interrupt(self) -> None:
        self._interrupted = True
        try:
            self.spark.interruptTag(self.tag)
        except Exception as e:  # the session may be gone already
            log.warning("one-job engine: interrupting the job failed: %s", e)


def run_here(spark, frame, ctx: tasks.TaskContext, plan: one_job.JobPlan, coordination: Coordination, *,
             start_seconds: float, stall_seconds: float, finish_seconds: float) -> tuple[Outcome, list[AsyncReport]]:
    """The fit with its coordinator in this process: the job's tasks connect here."""
    bind, host, ports = coordinator_address(spark)
    server = ParameterServer(bind=bind, host=host, ports=ports, **coordination.options)
    try:
        job = OneJob(spark, frame.mapInArrow(partial(one_job.one_job_task, ctx, server.endpoint, plan),
                                             one_job.REPORT_SCHEMA),
                     server, plan.walk.shards, start_seconds=start_seconds, stall_seconds=stall_seconds)
        try:
            value = coordination.run(server, job.check)
        except BaseException:
            job.interrupt()
            raise
        finally:
            job.finish(finish_seconds)
        job.raise_failure()
        return Outcome.of(server, value), job.reports
    finally:
        server.shutdown()


def run_in_cluster(spark, frame, ctx: tasks.TaskContext, plan: one_job.JobPlan, coordination: Coordination, *,
                   stall_seconds: float, attempts: int) -> tuple[Outcome, list[AsyncReport]]:
    """The fit with its coordinator in the job: one more task (the frame's last partition, empty) runs it, and the
    job runs in barrier mode so that every task learns its address (``BarrierTaskContext.allGather``). Spark does
    not retry a barrier job's task (the whole job fails): a job that fails, unless by the run's own error, is run
    again from the fit's start, up to ``attempts`` times in all."""
    token = secrets.token_bytes(TOKEN_BYTES)
    task = partial(cluster_task, ctx, plan, token, coordination, stall_seconds)
    for attempt in range(attempts):
        job = OneJob(spark, frame.mapInArrow(task, CLUSTER_SCHEMA, barrier=True), None, plan.walk.shards,
                     start_seconds=0.0, stall_seconds=stall_seconds)
        try:
            job.wait()
        except BaseException:
            job.interrupt()
            job.finish(30.0)
            raise
        if not job.failure:
            [found] = [row["outcome"] for row in job.rows if row["shard"] < 0]
            return pickle.loads(found), job.reports  # our own task's bytes, through Spark's result channel
        job.raise_input_problem()
        cause = task_errors.task_error(job.failure[0])
        if job.cancelled():
            raise task_errors.StepFailure(f"the training job was interrupted: {cause}")
        if attempt + 1 == attempts:
            raise task_errors.StepFailure(f"the training job failed (attempt {attempts} of {attempts}, the "
                                          f"coordinator in the cluster): {cause}")
        log.warning("one-job engine: the training job failed (%s); a barrier job is not retried by Spark: running it "
                    "again from the fit's start (%d of %d)", cause, attempt + 2, attempts)
    raise AssertionError("unreachable")


def cluster_task(ctx: tasks.TaskContext, plan: one_job.JobPlan, token: bytes, coordination: Coordination,
                 stall_seconds: float, batches: Iterator) -> Iterator:
    """mapInArrow body of a barrier job: the last partition's task (empty) runs the coordinator, the others a shard's
    long task (``executor.one_job.one_job_task``) against it; all wait for each other at the end, so that the
    coordinator serves until the last task has its answer."""
    import pyarrow as pa
    from pyspark import BarrierTaskContext  # here only: this module is imported on the driver without a task
    barrier = BarrierTaskContext.get()
    me = barrier.partitionId()
    if me < plan.walk.shards:
        [address] = barrier.allGather("")[plan.walk.shards:]  # (the coordinator's message is the last)
        host, port = address.rsplit(":", 1)
        rows = list(one_job.one_job_task(ctx, Endpoint(host, int(port), token), plan, batches))
        barrier.barrier()
        for batch in rows:
            yield _with_outcome(batch, None)
        return
    for _ in batches:
        pass
    host = barrier.getTaskInfos()[me].address.rsplit(":", 1)[0]  # this executor's host, as Spark reaches it
    server = ParameterServer(bind="0.0.0.0", host=host, token=token, **coordination.options)
    value = None
    try:
        barrier.allGather(f"{host}:{server.endpoint.port}")
        value = coordination.run(server, partial(server_check, server, stall_seconds))
    except Exception as e:  # the run's error is the fit's: it goes to the client
        server.stop(e)
    finally:
        server.stop()
        barrier.barrier()
        server.shutdown()
    outcome = Outcome.of(server, value)
    report = AsyncReport(-1, tasks.attempt_number(), 0, 0, os.getpid(), "coordinator")
    yield _with_outcome(pa.RecordBatch.from_pylist([dataclasses.asdict(report)]), pickle.dumps(outcome))


def _with_outcome(report, outcome: bytes | None):
    """A barrier job's row (CLUSTER_SCHEMA): a task's report (a RecordBatch of REPORT_SCHEMA) and the coordinator's
    outcome (None for a shard's task)."""
    import pyarrow as pa
    return pa.RecordBatch.from_arrays(report.columns + [pa.array([outcome] * report.num_rows, pa.binary())],
                                      schema=pa.schema(list(report.schema) + [("outcome", pa.binary())]))

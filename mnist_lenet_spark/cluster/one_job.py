"""The one-job engine, driver side: a fit is one Spark job of long-lived tasks (``executor.one_job``), written with
DataFrame operations only, so it runs on a classic session and on Spark Connect alike (no SparkContext, no RDD).

``shard_frame`` cuts the training DataFrame into its shards as staging does (row ``i`` of the frame's order goes to
shard ``k`` when ``edges[k] <= i < edges[k + 1]``), one shard per partition; ``OneJob`` runs ``mapInArrow`` over it
in a thread, tagged so that it can be interrupted, and watches it: every shard must say hello to the coordinator
within ``start_seconds`` (else too few task slots: one line naming both numbers), the run fails when the job ends
early or nothing arrives for ``stall_seconds``.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from functools import partial

import numpy as np

from mnist_lenet_spark.cluster import step_signal, task_errors
from mnist_lenet_spark.config import ConfigError
from mnist_lenet_spark.data import DataError
from mnist_lenet_spark.executor import one_job, tasks
from mnist_lenet_spark.executor.async_task import AsyncReport
from mnist_lenet_spark.loop import sharding

log = logging.getLogger(__name__)
POLL_SECONDS = 0.01
#: the host the executors reach this process at, when it is not Spark's driver (a Spark Connect client)
COORDINATOR_HOST_CONF = "spark.mnistLenet.coordinator.host"
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


def shard_frame(df, features_col: str, label_col: str, shards: int):
    """(frame, rows): ``df``'s rows with their row number (``one_job.ROW``), features (Vectors as arrays: Arrow has
    no type for them) and label, in ``shards`` partitions, partition k holding exactly shard k's rows. Two small
    jobs: the rows of each input partition, and Spark's own hash of candidate keys."""
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
    keys = F.array(*[F.lit(k) for k in _home_keys(df.sparkSession, shards)])
    frame = (numbered.select(row.alias(one_job.ROW), F.col(features_col), F.col(label_col))
             .withColumn("_key", F.element_at(keys, (shard + 1).cast("int")).cast("long"))  # hashed as the ids were
             .repartition(shards, "_key").drop("_key"))
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


class OneJob:
    """The fit's one Spark job: ``frame.mapInArrow(one_job_task)`` in a thread, over ``server``'s coordinator."""

    def __init__(self, spark, frame, ctx: tasks.TaskContext, server, plan: one_job.JobPlan, *,
                 start_seconds: float, stall_seconds: float):
        self.spark, self.server, self.plan = spark, server, plan
        self.start_seconds, self.stall_seconds = start_seconds, stall_seconds
        self.tag = f"mnist-lenet-{uuid.uuid4().hex[:8]}"
        self.reports: list[AsyncReport] = []  # each task attempt's, once the job has ended
        self.failure: list[BaseException] = []
        self._job = frame.mapInArrow(partial(one_job.one_job_task, ctx, server.endpoint, plan),
                                     one_job.REPORT_SCHEMA)
        self._interrupted = False
        self._thread = threading.Thread(target=self._run, name="one-job", daemon=True)
        self.started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        self.spark.addTag(self.tag)
        try:
            self.reports.extend(AsyncReport(**row.asDict()) for row in self._job.collect())
        except Exception as e:  # a cancelled job raises too
            self.failure.append(e)
        finally:
            self.spark.removeTag(self.tag)

    def check(self) -> None:
        """Raise the run's error, if it has one: the coordinator's, the job's, too few tasks, or a stall."""
        server = self.server
        if server.error is not None:
            raise server.error
        if not self._thread.is_alive():
            cause = task_errors.task_error(self.failure[0]) if self.failure else self._lost()
            raise task_errors.StepFailure(f"the training job ended at version {server.version}: {cause}")
        shards = self.plan.walk.shards
        if len(server.newest_attempt) < shards and time.monotonic() - self.started > self.start_seconds:
            raise ConfigError(f"the training job needs {shards} task slots at once (one long task per shard); only "
                              f"{len(server.newest_attempt)} started within {self.start_seconds:g} s: give the "
                              f"job more slots, or fewer workers")
        if time.monotonic() - server.last_progress > self.stall_seconds:
            raise task_errors.StepFailure(f"the training job stalled: nothing arrived in {self.stall_seconds:g} s "
                                          f"(at version {server.version})")

    def _lost(self) -> str:
        lost = [r.ended for r in self.reports if r.ended not in ("budget", "superseded")]
        return lost[0] if lost else "every task ended"

    def finish(self, seconds: float) -> None:
        """Stop the coordinator (pulls answer stop: each task ends after its current mini-batch), wait up to
        ``seconds`` for the job, then interrupt it by its tag."""
        self.server.stop()
        self._thread.join(seconds)
        if self._thread.is_alive():
            log.warning("one-job engine: tasks still running %g s after the end; interrupting them", seconds)
            self.interrupt()
            self._thread.join(30.0)

    def raise_failure(self) -> None:
        """After ``finish``: a job that failed by itself fails the fit, even after its last step."""
        if self.failure and not self._interrupted:
            raise task_errors.StepFailure(f"the training job failed: {task_errors.task_error(self.failure[0])}")

    def interrupt(self) -> None:
        self._interrupted = True
        try:
            self.spark.interruptTag(self.tag)
        except Exception as e:  # the session may be gone already
            log.warning("one-job engine: interrupting the job failed: %s", e)

"""The backup-worker policy (Chen et al. 2016): launch N + b gradient tasks a step, use the first N, stop waiting.

Results arrive through a custom accumulator as each task finishes and are added into one running sum (as
TensorFlow's SyncReplicasOptimizer does with its ConditionalAccumulator): the driver holds one gradient whatever N
is, and the summing overlaps the wait. At the N-th the step closes, the late tasks are told so (``step_signal``) and,
after a grace period, Spark cancels what still runs. With ``combine="executors"`` (tens of workers and more) only a
note of each result arrives: the sums stay in their cached partitions, and at the N-th note one more job adds the
kept ones on the executors (``BackupStep._sum_kept``). README, "Backup workers", explains why each piece.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import threading
import time
import uuid
from functools import partial
from operator import add

import numpy as np

from mnist_lenet_spark.cluster import step_signal, task_errors
from mnist_lenet_spark.config import BackupConfig, ConfigError
from mnist_lenet_spark.executor import tasks
from mnist_lenet_spark.loop.sharding import ShardBatch
from mnist_lenet_spark.loop.sums import GradientSum

log = logging.getLogger(__name__)
POLL_SECONDS = 0.002
STOP_SECONDS = 1.0  # at close, how long signalled tasks get to stop by themselves before Spark cancels them


class StepResults:
    """The driver's value of the backup accumulator: the running sum of the first ``need`` gradients of the open step,
    what they came from, and its failures (tasks whose last attempt failed; they carry no gradient). A gradient
    arrives pushed over the step signal (``push``, ahead of its task's note) or inside its note (``add``); either way
    it is added at once if fewer than ``need`` were taken, and its shard counts as kept when its note arrives. Results
    of any other step (a task that finished after its step closed) and gradients past the first ``need`` are dropped
    on arrival: one gradient is held, whatever N is. Added to by the step signal's thread and PySpark's accumulator
    thread, read by the step's loop: under a lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self.open(-1, 0)

    def open(self, step: int, need: int) -> None:
        """Start collecting ``step``: its first ``need`` gradients are kept."""
        with self._lock:
            self.step, self.need = step, need
            self.sums: GradientSum | None = None
            self.taken: set[int] = set()  # shards whose gradients are in self.sums
            self.kept: list[tasks.BackupResult] = []  # notes of the taken shards (their sums are in self.sums)
            self.failed: list[tasks.BackupResult] = []

    def push(self, step: int, shard: int, grad: np.ndarray, loss_sum: float, count: int) -> bool:
        """A task's gradient sum pushed ahead of its note (``step_signal.PushHandler``): added if it is one of the
        step's first ``need``. False when its step is over or has its gradients (its note is dropped too)."""
        with self._lock:
            if step != self.step:
                return False
            if shard in self.taken:  # a retried task's second push: it is in already
                return True
            return self._take(shard, GradientSum(grad, loss_sum, count))

    def add(self, result: tasks.BackupResult) -> None:
        with self._lock:
            if result.step != self.step:
                return
            if result.error is not None:
                self.failed.append(result)
                return
            if len(self.kept) >= self.need or result.delivery == "unwanted":
                return
            if result.delivery == "inline" and result.shard not in self.taken:
                if not self._take(result.shard, result.sums):
                    return
            elif result.delivery == "pushed" and result.shard not in self.taken:  # a push is answered once added
                log.error("step %d: shard %d's pushed gradient is missing; its result is dropped", self.step,
                          result.shard)
                return
            if any(r.shard == result.shard for r in self.kept):  # a second note of a retried task
                return
            # "cached": a note only, the sums stay on its executor (combine="executors")
            self.kept.append(dataclasses.replace(result, sums=None))

    def _take(self, shard: int, sums: GradientSum) -> bool:
        """Add ``shard``'s ``sums`` into the running sum unless ``need`` were taken already (under the lock)."""
        if len(self.taken) >= self.need:
            return False
        if self.sums is None:  # just unpickled or received: ours to add into (copied if read-only)
            grad = sums.grad_sum if sums.grad_sum.flags.writeable else sums.grad_sum.copy()
            self.sums = dataclasses.replace(sums, grad_sum=grad)
        else:
            np.add(self.sums.grad_sum, sums.grad_sum, out=self.sums.grad_sum)  # (P,) in place
            self.sums = GradientSum(self.sums.grad_sum, self.sums.loss_sum + sums.loss_sum,
                                          self.sums.count + sums.count)
        self.taken.add(shard)
        return True

    def counts(self) -> tuple[int, int]:
        """(gradients kept, failures) of the open step so far."""
        with self._lock:
            return len(self.kept), len(self.failed)

    def close(self) -> tuple[GradientSum | None, list[tasks.BackupResult], list[tasks.BackupResult]]:
        """(sum, kept, failed) of the open step; nothing more is added to it."""
        with self._lock:
            out = self.sums, self.kept, self.failed
            self.step, self.sums, self.taken, self.kept, self.failed = -1, None, set(), [], []
            return out


class FirstResults:
    """AccumulatorParam of ``StepResults``. On an executor the value is the list of that task's own results
    (``zero``), sent whole; on the driver each arriving list is folded into the ``StepResults``."""

    def zero(self, value):
        return []

    def addInPlace(self, acc, new):
        if isinstance(acc, list):  # an executor's own results
            acc.extend(new)
            return acc
        for result in new:
            acc.add(result)
        return acc


MAX_RESULT_SIZE = "spark.driver.maxResultSize"


def check_result_size(sc, tasks_per_step: int, gradient_bytes: int) -> None:
    """ConfigError unless a step's task results fit in ``spark.driver.maxResultSize``: each backup task's gradient
    travels inside its task result (as an accumulator update), and Spark aborts a stage whose results add up
    to more (the plain path's treeReduce sends only partial sums)."""
    limit = sc._jsc.sc().conf().getSizeAsBytes(MAX_RESULT_SIZE, "1g")  # Spark's own parsing; 0: no limit
    per_task = gradient_bytes + (64 << 10)  # the rest of a result: pickling, task metrics
    if limit and tasks_per_step * per_task > limit:
        raise ConfigError(f"backup workers: {tasks_per_step} tasks a step x {per_task / 2**20:.1f} MB of gradient = "
                          f"{tasks_per_step * per_task / 2**20:.0f} MB of task results per step, over "
                          f"{MAX_RESULT_SIZE} ({limit / 2**20:.0f} MB); raise it (--conf {MAX_RESULT_SIZE}="
                          f"{-(-tasks_per_step * per_task // 2**30) + 1}g) or run fewer tasks")


class BackupStep:
    """The ``gradient`` function of ``training.fit_loop`` for ``workers`` tasks plus ``backup.workers`` more.
    ``describe(key)`` names a step's job in the Spark UI; ``gradient_bytes``: the size of one gradient."""

    def __init__(self, sc, ctx: tasks.TaskContext, source, workers: int, backup: BackupConfig, describe,
                 gradient_bytes: int = 0):
        from pyspark.accumulators import AccumulatorParam

        class Param(FirstResults, AccumulatorParam):
            pass

        self.sc, self.ctx, self.source, self.describe = sc, ctx, source, describe
        self.n, self.options = workers, backup
        shards = workers + backup.workers
        self.on_executors = backup.combine == "executors"
        if not self.on_executors:  # else only notes and ~sqrt(N) partial sums reach the driver
            check_result_size(sc, shards, gradient_bytes)  # every check before anything is created
        bind, host, ports = step_signal.driver_address(sc.getConf())
        self.shard_rdd = source.partitions(sc, shards)  # one partition per shard: every step's tasks
        self.wait_all = backup.mode == "wait-all"
        self.results = StepResults()
        self.accumulator = sc.accumulator(self.results, Param())
        self.run_id = uuid.uuid4().hex[:8]
        self.task_seconds: list[float] = []
        # (job thread, cancel timer, parameter broadcast, job group, cached sums or None) of unfinished steps
        self.pending: list[tuple[threading.Thread, threading.Timer | None, object, str, object]] = []
        self.stopped = sc.accumulator(0)  # late tasks that stopped by themselves when told their step closed
        self.cancelled: set[str] = set()  # job groups of steps Spark was asked to cancel
        self.killed_by_spark = 0  # tasks of those that had not finished: killed by Spark (or failed)
        self.signal = None
        if backup.signal and not self.wait_all:
            try:
                self.signal = step_signal.StepServer(bind, host, ports=ports, on_push=self.results.push,
                                                     push_bytes=gradient_bytes)
            except OSError as e:
                log.warning("no step signal on %s (%s): late tasks stop only when Spark cancels them", bind, e)

    def _grace(self) -> float:
        if self.options.grace is not None:
            return self.options.grace
        recent = self.task_seconds[-50:]
        return 2 * statistics.median(recent) if recent else 1.0

    def __call__(self, flat, batches: list[ShardBatch]) -> tuple[GradientSum, dict]:
        sc, step = self.sc, batches[0].key.step
        self._reap()
        group = f"mnist-lenet-{self.run_id}-step-{step}"
        bc = sc.broadcast((flat, batches))
        task = partial(tasks.backup_task, self.ctx, self.source, bc, step, self.accumulator,
                       self.signal.endpoint if self.signal else None, self.stopped, keep=self.on_executors)
        need = min(self.n, sum(1 for b in batches if len(b.index)))
        self.results.open(step, need)
        cached = None
        if self.on_executors:  # each task's sums stay in its cached partition (on disk if memory is short)
            from pyspark import StorageLevel
            cached = self.shard_rdd.mapPartitions(task).persist(StorageLevel.MEMORY_AND_DISK)
        # with cached sums a JVM action, so that they go to no second Python worker
        job = cached._jrdd.count if cached is not None else self.shard_rdd.mapPartitions(task).count
        t0 = time.perf_counter()
        thread, failure = task_errors.start_job(sc, group, f"{self.describe(batches[0].key)} (backup workers)", job)
        if self.wait_all:
            thread.join()
        while True:
            kept_count, failed_count = self.results.counts()
            if kept_count >= need or not thread.is_alive() or len(batches) - failed_count < need:
                break
            time.sleep(POLL_SECONDS)
        arrived = time.perf_counter()
        sums, kept, failed = self.results.close()
        if self.signal:
            self.signal.close_step(step)  # late tasks of this step now stop at their next check
        if len(kept) < need:
            self._cancel(group)
            thread.join()
            bc.destroy(blocking=False)
            if cached is not None:
                cached.unpersist(blocking=False)
            cause = failed[0].error if failed else task_errors.task_error(failure[0]) if failure else "its job ended"
            raise task_errors.StepFailure(f"step {step + 1}: only {len(kept)} of the {need} gradients needed arrived, "
                                       f"and no more can; a task failed: {cause}")
        self.task_seconds.extend(r.seconds for r in kept)
        timer = None
        if thread.is_alive() and self.options.cancel:
            timer = threading.Timer(self._grace(), lambda: thread.is_alive() and self._cancel(group))
            timer.daemon = True
            timer.start()
        self.pending.append((thread, timer, bc, group, cached))
        kept_shards = sorted(r.shard for r in kept)
        if cached is not None and kept:
            sums = self._sum_kept(cached, kept, f"{self.describe(batches[0].key)} (summing the kept gradients)")
        info = {"step_seconds": time.perf_counter() - t0, "kept": kept_shards,
                "dropped": [k for k in range(len(batches)) if k not in kept_shards],
                "failed": sorted(r.shard for r in failed), "close_seconds": time.perf_counter() - arrived,
                "pushed": sum(r.delivery == "pushed" for r in kept)}  # kept sums that came over the step signal
        return sums, info

    def _sum_kept(self, cached, kept: list[tasks.BackupResult], description: str) -> GradientSum:
        """The kept tasks' sums, added on the executors: a job over their cached partitions only (partition k =
        shard k) in ~sqrt(N) groups, so the driver receives ~sqrt(N) partial sums instead of N gradients."""
        from pyspark.rdd import RDD
        jvm = self.sc._jvm
        shards = jvm.java.util.HashSet()
        for result in kept:
            shards.add(result.shard)
        # a Scala Set is an Int => Boolean: Spark's PartitionPruningRDD keeps the partitions it contains, and
        # runs no task for the others (a late task may still be computing its partition)
        pruned = jvm.org.apache.spark.rdd.PartitionPruningRDD.create(
            cached._jrdd.rdd(), jvm.scala.jdk.javaapi.CollectionConverters.asScala(shards))
        groups = math.ceil(math.sqrt(len(kept)))
        self.sc.setJobDescription(description)
        try:
            # coalesce without a shuffle groups the kept partitions by where they are cached: each of ~sqrt(N)
            # tasks adds its group's sums (read locally where it can), and the driver adds those few
            total = RDD(pruned.toJavaRDD(), self.sc, cached._jrdd_deserializer).coalesce(groups).reduce(add)
        except Exception as e:
            raise task_errors.StepFailure(f"{description}: {task_errors.task_error(e)}") from None
        expected = sum(r.examples for r in kept)
        if total.count != expected:  # a cached partition was lost, and its recomputation stopped (step closed)
            raise task_errors.StepFailure(f"{description}: {total.count} examples summed, {expected} kept: a kept "
                                       f"task's cached sums were lost (an executor lost?) before they were added")
        return total

    def _reap(self, wait: bool = False) -> None:
        """Forget finished steps (destroying their parameter broadcasts); with ``wait``, finish all."""
        still = []
        for thread, timer, bc, group, cached in self.pending:
            if wait:
                if timer is not None:
                    timer.cancel()
                if self.signal:  # told to stop (see close): give them a moment, so no worker is killed
                    thread.join(timeout=STOP_SECONDS)
                if thread.is_alive() and self.options.cancel:
                    self._cancel(group)
                thread.join()
            if thread.is_alive():
                still.append((thread, timer, bc, group, cached))
            else:
                bc.destroy(blocking=False)  # only now: a late task may still be reading it
                if cached is not None:  # and a late task may still be caching its sums
                    cached.unpersist(blocking=False)
                if group in self.cancelled:
                    self.cancelled.discard(group)
                    self.killed_by_spark += self._unfinished_tasks(group)
        self.pending = still

    def _cancel(self, group: str) -> None:
        self.cancelled.add(group)
        self.sc.cancelJobGroup(group)

    def _unfinished_tasks(self, group: str) -> int:
        """Tasks of a cancelled step's job that did not finish (Spark killed them), from Spark's status store."""
        tracker, count = self.sc.statusTracker(), 0
        for job in tracker.getJobIdsForGroup(group):
            info = tracker.getJobInfo(job)
            for stage in (info.stageIds if info else []):
                stage_info = tracker.getStageInfo(stage)
                if stage_info:
                    count += stage_info.numTasks - stage_info.numCompletedTasks
        return count

    def late_tasks(self) -> dict:
        """How the late tasks of the fit ended: stopped by the step signal, or killed by Spark (a fallback)."""
        return {"stopped_by_signal": self.stopped.value, "killed_by_spark": self.killed_by_spark}

    def close(self) -> None:
        """Wait for every step's job to end (cancelled or finished): no leaked jobs, threads or broadcasts."""
        if self.signal:
            self.signal.close_step(1 << 62)  # every step is over: late tasks stop now
        self._reap(wait=True)
        if self.signal:
            self.signal.shutdown()
        # PySpark keeps every accumulator of a session in a registry, value included: without this each
        # fit would leave its last gradient sum on the driver
        self.results.open(-1, 0)
        from pyspark.accumulators import _accumulatorRegistry
        _accumulatorRegistry.pop(self.accumulator.aid, None)
        _accumulatorRegistry.pop(self.stopped.aid, None)
        late = self.late_tasks()
        if self.signal and late["killed_by_spark"]:
            log.warning("%d late tasks were killed by Spark, %d stopped by the step signal: the signal did not reach "
                        "them all (a network fault, or a firewall: its port is set with %s)",
                        late["killed_by_spark"], late["stopped_by_signal"], step_signal.PORT_CONF)

"""The backup-worker policy (Chen et al. 2016): launch N + b gradient tasks a step, use the first N, stop waiting.

Results arrive through a custom accumulator as each task finishes; at the N-th the driver sums
them, tells the late tasks their step is closed (``step_signal``) and, after a grace period,
lets Spark cancel what is still running. README, "Backup workers", explains why each piece.
"""
from __future__ import annotations

import logging
import statistics
import threading
import time
import uuid
from functools import partial, reduce
from operator import add

from . import step_signal, tasks, training
from .config import BackupConfig, ConfigError
from .sharding import ShardBatch

log = logging.getLogger(__name__)
POLL_SECONDS = 0.002
STOP_SECONDS = 1.0  # at close, how long signalled tasks get to stop by themselves before Spark cancels them


class FirstResults:
    """AccumulatorParam: keep the earliest-arriving ``BackupResult``s of the newest step, at most ``keep``.

    A result for an older step (a task that finished after its step was closed) is dropped,
    and so is every gradient past the first ``keep`` of a step: memory stays at N gradients.
    Failures (a task whose last attempt failed) are kept: they carry no gradient.
    """

    def __init__(self, keep: int):
        self.keep = keep

    def zero(self, value):
        return []

    def addInPlace(self, acc, new):
        for result in new:
            newest = acc[0].step if acc else -1
            if result.step > newest:
                acc.clear()
            if result.step >= newest and (result.error or sum(r.error is None for r in acc) < self.keep):
                acc.append(result)
        return acc


class BackupStep:
    """The ``gradient`` function of ``training.fit_loop`` for ``workers`` tasks plus ``backup.workers`` more.

    ``describe(key)`` names a step's job in the Spark UI.
    """

    def __init__(self, sc, ctx: tasks.TaskContext, source, workers: int, backup: BackupConfig, describe):
        from pyspark.accumulators import AccumulatorParam

        class Param(FirstResults, AccumulatorParam):
            pass

        self.sc, self.ctx, self.source, self.describe = sc, ctx, source, describe
        self.n, self.options = workers, backup
        shards = workers + backup.workers
        self.shard_rdd = source.partitions(sc, shards)  # one partition per shard: every step's tasks
        self.wait_all = backup.mode == "wait-all"
        self.accumulator = sc.accumulator([], Param(workers + backup.workers if self.wait_all else workers))
        self.run_id = uuid.uuid4().hex[:8]
        self.task_seconds: list[float] = []
        self.pending: list[tuple[threading.Thread, threading.Timer | None, object, str]] = []
        self.stopped = sc.accumulator(0)  # late tasks that stopped by themselves when told their step closed
        self.cancelled: set[str] = set()  # job groups of steps Spark was asked to cancel
        self.killed_by_spark = 0  # tasks of those that had not finished: killed by Spark (or failed)
        self.signal = None
        if backup.signal and not self.wait_all:
            conf = sc.getConf()
            host = conf.get("spark.driver.host", "127.0.0.1")
            bind = conf.get("spark.driver.bindAddress", host)  # listen where Spark listens
            try:
                ports = step_signal.parse_ports(conf.get(step_signal.PORT_CONF, "0"))
            except ValueError as e:
                raise ConfigError(str(e)) from None
            try:
                self.signal = step_signal.StepServer(bind, host, ports=ports)
            except OSError as e:
                log.warning("no step signal on %s (%s): late tasks stop only when Spark cancels them", bind, e)

    def _grace(self) -> float:
        if self.options.grace is not None:
            return self.options.grace
        recent = self.task_seconds[-50:]
        return 2 * statistics.median(recent) if recent else 1.0

    def __call__(self, flat, batches: list[ShardBatch]) -> tuple[tasks.GradientSum, dict]:
        sc, step = self.sc, batches[0].key.step
        self._reap()
        group = f"mnist-lenet-{self.run_id}-step-{step}"
        bc = sc.broadcast((flat, batches))
        task = partial(tasks.backup_task, self.ctx, self.source, bc, step, self.accumulator,
                       self.signal.endpoint if self.signal else None, self.stopped)
        need = min(self.n, sum(1 for b in batches if len(b.index)))
        failure = []

        def run_job():
            sc.setJobGroup(group, f"{self.describe(batches[0].key)} (backup workers)", interruptOnCancel=True)
            try:
                self.shard_rdd.mapPartitions(task).count()
            except Exception as e:  # a cancelled job raises here too
                failure.append(e)

        from pyspark import InheritableThread
        t0 = time.perf_counter()
        thread = InheritableThread(target=run_job, daemon=True)
        thread.start()
        if self.wait_all:
            thread.join()
        while True:
            results = [r for r in self.accumulator.value if r.step == step]
            failed = [r for r in results if r.error]
            if len(results) - len(failed) >= need or not thread.is_alive() or len(batches) - len(failed) < need:
                break
            time.sleep(POLL_SECONDS)
        arrived = time.perf_counter()
        kept = sorted((r for r in results if not r.error), key=lambda r: r.finished_at)[:need]
        if len(kept) < need:
            if self.signal:
                self.signal.close_step(step)
            self._cancel(group)
            thread.join()
            bc.destroy(blocking=False)
            cause = failed[0].error if failed else training.task_error(failure[0]) if failure else "its job ended"
            raise training.StepFailure(f"step {step + 1}: only {len(kept)} of the {need} gradients needed arrived, "
                                       f"and no more can; a task failed: {cause}")
        if self.signal:
            self.signal.close_step(step)  # late tasks of this step now stop at their next check
        self.task_seconds.extend(r.seconds for r in kept)
        timer = None
        if thread.is_alive() and self.options.cancel:
            timer = threading.Timer(self._grace(), lambda: thread.is_alive() and self._cancel(group))
            timer.daemon = True
            timer.start()
        self.pending.append((thread, timer, bc, group))
        sums = reduce(add, (r.sums for r in kept))
        kept_shards = sorted(r.shard for r in kept)
        info = {"step_seconds": time.perf_counter() - t0, "kept": kept_shards,
                "dropped": [k for k in range(len(batches)) if k not in kept_shards],
                "failed": sorted(r.shard for r in failed), "close_seconds": time.perf_counter() - arrived}
        return sums, info

    def _reap(self, wait: bool = False) -> None:
        """Forget finished steps (destroying their parameter broadcasts); with ``wait``, finish all."""
        still = []
        for thread, timer, bc, group in self.pending:
            if wait:
                if timer is not None:
                    timer.cancel()
                if self.signal:  # told to stop (see close): give them a moment, so no worker is killed
                    thread.join(timeout=STOP_SECONDS)
                if thread.is_alive() and self.options.cancel:
                    self._cancel(group)
                thread.join()
            if thread.is_alive():
                still.append((thread, timer, bc, group))
            else:
                bc.destroy(blocking=False)  # only now: a late task may still be reading it
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
        # fit would leave its last N gradients on the driver
        self.accumulator.value = []
        from pyspark.accumulators import _accumulatorRegistry
        _accumulatorRegistry.pop(self.accumulator.aid, None)
        _accumulatorRegistry.pop(self.stopped.aid, None)
        late = self.late_tasks()
        if self.signal and late["killed_by_spark"]:
            log.warning("%d late tasks were killed by Spark, %d stopped by the step signal: the signal did not reach "
                        "them all (a network fault, or a firewall: its port is set with %s)",
                        late["killed_by_spark"], late["stopped_by_signal"], step_signal.PORT_CONF)

"""Backup workers (Chen et al. 2016): launch N + b gradient tasks a step, use the first N, stop waiting.

Each task adds ``(step, partition, finish_time, grad_sum, loss_sum, count)`` to a custom
accumulator, whose updates reach the driver as each task finishes. The step's job runs in a
thread under its own job group; the driver watches the accumulator and, as soon as N results of
this step have arrived, sums them and goes on to the next step. Results of an older step that
arrive late are discarded by the accumulator itself.

The step's remaining tasks are then cancelled (job group, ``interruptOnCancel``) after a short
grace period. Why the grace: in PySpark a cancelled *running* task costs its Python worker (the
worker is not reused; a fresh one must start and reload the broadcasts, ~0.25 s here), while
an ordinary late task finishes within one task time anyway. So tasks that are merely last get
``grace`` seconds to finish and keep their worker; real stragglers are killed and free their
slot. ``grace=0`` cancels at once, ``cancel=False`` never cancels. See README, "Backup workers".

Before any of that, the driver tells the step's late tasks that their step is closed
(``step_signal``): a task that asks in time stops by itself and keeps its worker, and Spark's
cancel is only the fallback.
"""
from __future__ import annotations

import logging
import statistics
import threading
import time
import uuid
from functools import partial

import numpy as np

from . import spark as sync
from . import step_signal

log = logging.getLogger(__name__)
POLL_SECONDS = 0.002
STOP_SECONDS = 1.0  # at close, how long signalled tasks get to stop by themselves before Spark cancels them


class _FirstResults:
    """AccumulatorParam: keep the earliest-arriving results of the newest step, at most ``keep``.

    A result for an older step (a task that finished after its step was closed) is dropped,
    and so is every result past the first ``keep`` of a step: memory stays at N gradients.
    """

    def __init__(self, keep: int):
        self.keep = keep

    def zero(self, value):
        return []

    def addInPlace(self, acc, new):
        for result in new:
            newest = acc[0][0] if acc else -1
            if result[0] > newest:
                acc.clear()
            if result[0] >= newest and len(acc) < self.keep:
                acc.append(result)
        return acc


def _backup_task(model, spec, params_bc, data_bc, train, threads, straggler, step, accumulator, signal, items):
    items = list(items)  # drain the iterator; the partition number is read from the items below
    started = time.time()
    should_stop = partial(step_signal.is_closed, signal, step) if signal else None
    total = sync.shard_gradient(model, spec, params_bc, data_bc, train, threads, straggler, items, should_stop)
    if total is not None:
        g, loss_sum, count, _ = total
        partition = items[0][1][3]
        accumulator.add([(step, partition, time.time(), g, loss_sum, count, time.time() - started)])
    return iter(())


class BackupGradient:
    """The ``gradient`` function of ``training.fit_loop`` for N workers plus b backup workers.

    ``grace``: seconds after the N-th result before the rest of the step is cancelled; None
    means twice the median task time seen so far. ``wait_all``: the comparison mode that waits
    for every task of the step and then keeps the N that finished first (no time is saved; it
    shows what dropping alone does). ``signal``: publish closed steps so late tasks stop by
    themselves (``step_signal``); False leaves them to Spark's cancel alone.
    """

    def __init__(self, sgd, spec, data_bc, config, total_steps, grace: float | None = None, cancel: bool = True,
                 wait_all: bool = False, signal: bool = True):
        from pyspark.accumulators import AccumulatorParam

        class Param(_FirstResults, AccumulatorParam):
            pass

        self.sgd, self.spec, self.data_bc, self.config, self.total = sgd, spec, data_bc, config, total_steps
        self.n = sgd.workers
        self.wait_all = wait_all
        self.accumulator = sgd.sc.accumulator([], Param(self.n + sgd.backup_workers if wait_all else self.n))
        self.run_id = uuid.uuid4().hex[:8]
        self.grace, self.cancel = grace, cancel
        self.task_seconds: list[float] = []
        self.pending: list[tuple[threading.Thread, threading.Timer | None, object, str]] = []
        self.signal = None
        if signal and not wait_all:
            host = sgd.sc.getConf().get("spark.driver.host", "127.0.0.1")
            try:
                self.signal = step_signal.StepServer(host)
            except OSError as e:
                log.warning("no step signal on %s (%s): late tasks stop only when Spark cancels them", host, e)

    def _grace(self) -> float:
        if self.grace is not None:
            return self.grace
        recent = self.task_seconds[-50:]
        return 2 * statistics.median(recent) if recent else 1.0

    def __call__(self, flat, batches, epoch, step):
        sc = self.sgd.sc
        self._reap()
        group = f"mnist-lenet-{self.run_id}-step-{step}"
        bc = sc.broadcast(flat)
        rdd = self.sgd.step_rdd(self.config, batches, epoch, step)
        task = partial(_backup_task, self.sgd.model, self.spec, bc, self.data_bc, self.config.dropout,
                       self.sgd.threads, self.sgd.straggler, step, self.accumulator,
                       self.signal.address if self.signal else None)
        need = min(self.n, sum(1 for b in batches if len(b)))  # a task with an empty batch sends nothing
        failure = []

        def run_job():
            sc.setJobGroup(group, f"step {step + 1}/{self.total}, epoch {epoch + 1} (backup workers)",
                           interruptOnCancel=True)
            try:
                rdd.mapPartitions(task).count()
            except Exception as e:  # a cancelled job raises here too
                failure.append(e)

        from pyspark import InheritableThread
        t0 = time.perf_counter()
        thread = InheritableThread(target=run_job, daemon=True)
        thread.start()
        if self.wait_all:
            thread.join()
        while True:
            kept = [r for r in self.accumulator.value if r[0] == step]
            if len(kept) >= need or not thread.is_alive():
                break
            time.sleep(POLL_SECONDS)
        arrived = time.perf_counter()
        kept = sorted((r for r in self.accumulator.value if r[0] == step), key=lambda r: r[2])[:need]
        if len(kept) < need:
            thread.join()
            bc.destroy(blocking=False)
            raise RuntimeError(f"step {step}: only {len(kept)} of {need} gradient tasks finished") from (
                failure[0] if failure else None)
        if self.signal:
            self.signal.close_step(step)  # late tasks of this step now stop at their next check
        self.task_seconds.extend(r[6] for r in kept)
        timer = None
        if thread.is_alive() and self.cancel:
            timer = threading.Timer(self._grace(), lambda: thread.is_alive() and sc.cancelJobGroup(group))
            timer.daemon = True
            timer.start()
        self.pending.append((thread, timer, bc, group))
        g = np.sum([r[3] for r in kept], axis=0)
        kept_parts = sorted(r[1] for r in kept)
        info = {"step_seconds": time.perf_counter() - t0, "kept": kept_parts,
                "dropped": [k for k in range(len(batches)) if k not in kept_parts],
                "close_seconds": time.perf_counter() - arrived}
        return g, float(sum(r[4] for r in kept)), int(sum(r[5] for r in kept)), info

    def _reap(self, wait: bool = False) -> None:
        """Forget finished steps (destroying their parameter broadcasts); with ``wait``, finish all."""
        still = []
        for thread, timer, bc, group in self.pending:
            if wait:
                if timer is not None:
                    timer.cancel()
                if self.signal:  # told to stop (see close): give them a moment, so no worker is killed
                    thread.join(timeout=STOP_SECONDS)
                if thread.is_alive() and self.cancel:
                    self.sgd.sc.cancelJobGroup(group)
                thread.join()
            if thread.is_alive():
                still.append((thread, timer, bc, group))
            else:
                bc.destroy(blocking=False)  # only now: a late task may still be reading it
        self.pending = still

    def close(self) -> None:
        """Wait for every step's job to end (cancelled or finished): no leaked jobs, threads or broadcasts."""
        if self.signal:
            self.signal.close_step(1 << 62)  # every step is over: late tasks stop now
        self._reap(wait=True)
        if self.signal:
            self.signal.shutdown()

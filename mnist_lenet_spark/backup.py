"""Backup workers (Chen et al. 2016): launch N + b gradient tasks a step, use the first N, stop waiting.

Each task adds ``(step, partition, finish_time, grad_sum, loss_sum, count)`` to a custom
accumulator, whose updates reach the driver as each task finishes. The step's job runs in a
thread under its own job group; the driver watches the accumulator and, once N results of
this step have arrived, cancels the job group (``interruptOnCancel``) and sums the kept N.
Results of an older step that arrive late are discarded by the accumulator itself.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from functools import partial

import numpy as np

from . import spark as sync

log = logging.getLogger(__name__)
POLL_SECONDS = 0.002


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


def _backup_task(model, spec, params_bc, data_bc, train, threads, straggler, step, accumulator, items):
    items = list(items)  # drain the iterator
    partition = items[0][1][3] if items else -1
    total = sync.shard_gradient(model, spec, params_bc, data_bc, train, threads, straggler, items)
    if total is not None:
        g, loss_sum, count, _ = total
        accumulator.add([(step, partition, time.time(), g, loss_sum, count)])
    return iter(())


class BackupGradient:
    """The ``gradient`` function of ``training.fit_loop`` for N workers plus b backup workers."""

    def __init__(self, sgd, spec, data_bc, config, total_steps):
        from pyspark.accumulators import AccumulatorParam

        class Param(_FirstResults, AccumulatorParam):
            pass

        self.sgd, self.spec, self.data_bc, self.config, self.total = sgd, spec, data_bc, config, total_steps
        self.n = sgd.workers
        self.accumulator = sgd.sc.accumulator([], Param(self.n))
        self.run_id = uuid.uuid4().hex[:8]

    def __call__(self, flat, batches, epoch, step):
        sc = self.sgd.sc
        group = f"mnist-lenet-{self.run_id}-step-{step}"
        bc = sc.broadcast(flat)
        rdd = self.sgd.step_rdd(self.config, batches, epoch, step)
        task = partial(_backup_task, self.sgd.model, self.spec, bc, self.data_bc, self.config.dropout,
                       self.sgd.threads, self.sgd.straggler, step, self.accumulator)
        expected = sum(1 for b in batches if len(b))  # tasks with an empty batch send nothing
        need = min(self.n, expected)
        failure = []

        def run_job():
            sc.setJobGroup(group, f"step {step + 1}/{self.total}, epoch {epoch + 1} (backup)",
                           interruptOnCancel=True)
            try:
                rdd.mapPartitions(task).count()
            except Exception as e:  # a cancelled job raises here; only a real failure is kept
                failure.append(e)

        from pyspark import InheritableThread
        t0 = time.perf_counter()
        thread = InheritableThread(target=run_job, daemon=True)
        thread.start()
        while True:
            kept = [r for r in self.accumulator.value if r[0] == step]
            if len(kept) >= need or not thread.is_alive():
                break
            time.sleep(POLL_SECONDS)
        arrived = time.perf_counter()
        kept = [r for r in self.accumulator.value if r[0] == step][:need]
        if thread.is_alive():
            sc.cancelJobGroup(group)
        thread.join()
        bc.destroy(blocking=False)
        if len(kept) < need:
            raise RuntimeError(f"step {step}: only {len(kept)} of {need} gradient tasks finished") from (
                failure[0] if failure else None)
        g = np.sum([r[3] for r in kept], axis=0)
        kept_parts = sorted(r[1] for r in kept)
        dropped = [k for k in range(len(batches)) if k not in kept_parts]
        info = {"step_seconds": time.perf_counter() - t0, "kept": kept_parts, "dropped": dropped,
                "close_seconds": time.perf_counter() - arrived}
        return g, float(sum(r[4] for r in kept)), int(sum(r[5] for r in kept)), info

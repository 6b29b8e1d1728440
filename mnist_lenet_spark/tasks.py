"""What runs inside Spark's Python workers: the gradient sum of a shard's mini-batch and the task bodies.

The single-process trainer calls the same functions in its own process. No pyspark import here:
broadcasts and accumulators arrive as arguments.
"""
from __future__ import annotations

import ctypes
import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Iterator

import numpy as np

from . import data, step_signal
from .models import base
from .sharding import ShardBatch
from .straggler import StragglerModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GradientSum:
    """Sums over some examples, added with ``+``: the unit every trainer reduces."""
    grad_sum: np.ndarray  # (P,) sum of the per-example gradients, without the L2 term
    loss_sum: float
    count: int

    def __add__(self, other: GradientSum) -> GradientSum:
        return GradientSum(self.grad_sum + other.grad_sum, self.loss_sum + other.loss_sum, self.count + other.count)


@dataclass(frozen=True)
class TaskReport:
    """What a plain step's tasks send to ``treeReduce``: the sums, and the PIDs of the workers that computed
    them (so reuse of Python workers can be checked)."""
    sums: GradientSum
    pids: tuple[int, ...]

    def __add__(self, other: TaskReport) -> TaskReport:
        return TaskReport(self.sums + other.sums, self.pids + other.pids)


@dataclass(frozen=True)
class BackupResult:
    """What a backup-worker task adds to the step's accumulator."""
    step: int
    shard: int
    finished_at: float  # time.time() on the executor
    seconds: float  # the task's own duration
    sums: GradientSum


@dataclass(frozen=True)
class TaskContext:
    """What every gradient task of a fit needs besides its batch, the parameters and the data."""
    model: base.Model
    spec: base.ParamSpec
    threads: int  # BLAS threads per task (spark.task.cpus)
    dropout: bool = True
    straggler: StragglerModel | None = None


# -- process set-up -----------------------------------------------------------------------------------
_tuned: int | None = None
_limiter = None


def tune_process(blas_threads: int) -> None:
    """Once per process: cap BLAS threads (N tasks on N cores must not oversubscribe); keep freed blocks.

    glibc returns every freed block above its mmap threshold to the kernel, so each step's
    40 MB of temporaries page-fault again (~5 ms per 40 MB here). Raising the threshold keeps
    them in the heap; measured in benchmarks/kernel.py.
    """
    global _tuned, _limiter
    if _tuned == blas_threads:
        return
    import scipy.linalg.blas  # noqa: F401  (load SciPy's own BLAS too, or the limit misses it)
    from threadpoolctl import threadpool_limits
    _limiter = threadpool_limits(limits=blas_threads)
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 512 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except OSError:  # not glibc: keep the default allocator
        log.debug("mallopt not available")
    _tuned = blas_threads


def blas_threads() -> list[int]:
    """Thread counts of the BLAS libraries loaded in this process (for tests)."""
    from threadpoolctl import threadpool_info
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


# -- the gradient -------------------------------------------------------------------------------------
def gradient_sum(model: base.Model, spec: base.ParamSpec, flat_params: np.ndarray, X: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator | None) -> GradientSum:
    """Sums over a scaled batch X (n, ...), y (n,); dropout on when ``rng`` is given."""
    count = len(y)
    loss, grads = model.loss_and_grads(base.unflatten(flat_params, spec), X, y, train=rng is not None, rng=rng,
                                       l2=0.0)
    grad_sum = base.flatten(grads, spec)  # (P,)
    grad_sum *= grad_sum.dtype.type(count)
    return GradientSum(grad_sum, loss * count, count)


def sum_batches(model: base.Model, spec: base.ParamSpec, flat_params: np.ndarray, images: np.ndarray,
                labels: np.ndarray, batches: Iterable[ShardBatch], dropout: bool,
                should_stop: Callable[[], bool] | None = None) -> GradientSum | None:
    """Sums over the uint8 ``images[batch.index]`` of every batch, in ``flat_params``'s dtype; None if there
    are no batches, or when ``should_stop()`` (asked before each batch) says True."""
    total = None
    for batch in batches:
        if should_stop is not None and should_stop():
            return None
        if len(batch.index) == 0:
            part = GradientSum(np.zeros_like(flat_params), 0.0, 0)
        else:
            X = data.scale_batch(images[batch.index], flat_params.dtype.type)  # (n, 1, 28, 28)
            rng = batch.key.dropout_rng() if dropout else None
            part = gradient_sum(model, spec, flat_params, X, labels[batch.index], rng)
        total = part if total is None else total + part
    return total


def count_correct(model: base.Model, params: base.Params, images: np.ndarray, labels: np.ndarray,
                  chunk: int = 500) -> int:
    """How many uint8 images (N, 28, 28) the model classifies as ``labels`` (N,)."""
    dtype = next(iter(params.values())).dtype.type
    correct = 0
    for i in range(0, len(labels), chunk):
        probs = model.predict(params, data.scale_batch(images[i:i + chunk], dtype))  # (n, classes)
        correct += int(np.sum(np.argmax(probs, axis=1) == labels[i:i + chunk]))
    return correct


# -- task bodies (mapPartitions functions) ------------------------------------------------------------
# Each drains its input iterator first: only then does PySpark reuse the Python worker.
def shard_gradient(ctx: TaskContext, data_bc, params_bc, batches: list[ShardBatch],
                   should_stop: Callable[[], bool] | None = None) -> GradientSum | None:
    """Sums over this task's batches of the broadcast data, after any injected straggler delay."""
    tune_process(ctx.threads)
    if ctx.straggler is not None:
        for batch in batches:
            ctx.straggler.sleep(batch.key, should_stop)
    images, labels = data_bc.value
    return sum_batches(ctx.model, ctx.spec, params_bc.value, images, labels, batches, ctx.dropout, should_stop)


def step_task(ctx: TaskContext, data_bc, params_bc, partition: Iterator[ShardBatch]) -> Iterator[TaskReport]:
    """A plain synchronous step: this shard's sums, for ``treeReduce``."""
    total = shard_gradient(ctx, data_bc, params_bc, list(partition))
    if total is not None:
        yield TaskReport(total, (os.getpid(),))


def backup_task(ctx: TaskContext, data_bc, params_bc, step: int, accumulator, signal_address,
                partition: Iterator[ShardBatch]) -> Iterator:
    """A backup-worker step: the sums go to the accumulator as soon as they are ready, unless the driver
    closed the step meanwhile (then the task stops early and sends nothing)."""
    batches = list(partition)
    started = time.time()
    should_stop = partial(step_signal.is_closed, signal_address, step) if signal_address else None
    total = shard_gradient(ctx, data_bc, params_bc, batches, should_stop)
    if total is not None:
        finished = time.time()
        accumulator.add([BackupResult(step, batches[0].key.shard, finished, finished - started, total)])
    return iter(())


def given_batch_task(ctx: TaskContext, params_bc, partition: Iterator[tuple[np.ndarray, np.ndarray]]):
    """Sums over scaled batches (X (n, ...), y (n,)) that travel with the task; no dropout."""
    tune_process(ctx.threads)
    for X, y in partition:
        yield TaskReport(gradient_sum(ctx.model, ctx.spec, params_bc.value, X, y, rng=None), (os.getpid(),))


def count_correct_task(ctx: TaskContext, data_bc, params_bc, partition: Iterator[tuple[int, int]]):
    """Correct predictions over the (start, stop) ranges of the broadcast images."""
    tune_process(ctx.threads)
    images, labels = data_bc.value
    params = base.unflatten(params_bc.value, ctx.spec)
    yield sum(count_correct(ctx.model, params, images[a:b], labels[a:b]) for a, b in partition)

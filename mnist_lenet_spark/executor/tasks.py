"""What runs inside Spark's Python workers: the gradient sum of a shard's mini-batch and the training task bodies
(staging's half is ``shards`` and ``rows``; predictions are ``inference``). The single-process trainer calls the same
functions in its own process. No pyspark import here: broadcasts and accumulators arrive as arguments."""
from __future__ import annotations

import ctypes
import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Iterator

import numpy as np

from mnist_lenet_spark import data
from mnist_lenet_spark.executor import straggler
from mnist_lenet_spark.executor.emulation import EmulatedCompute
from mnist_lenet_spark.executor.shards import StagedShards
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.loop.sharding import ShardBatch
from mnist_lenet_spark.loop.sums import GradientSum
from mnist_lenet_spark.models import base
from mnist_lenet_spark.wire import step_signal

log = logging.getLogger(__name__)
EMULATION_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class TaskReport:
    """What a plain step's tasks send to ``treeReduce``: the sums, the PIDs of the workers that computed them
    (so reuse of Python workers can be checked) and each task's own seconds (Spark's overhead is the rest)."""
    sums: GradientSum
    pids: tuple[int, ...]
    seconds: tuple[float, ...] = ()

    def __add__(self, other: TaskReport) -> TaskReport:
        return TaskReport(self.sums + other.sums, self.pids + other.pids, self.seconds + other.seconds)


@dataclass(frozen=True)
class BackupResult:
    """What a backup-worker task adds to the step's accumulator: a note of its sums (``examples`` their count)
    and where they are (``delivery``), or the error of its last attempt."""
    step: int
    shard: int
    finished_at: float  # time.time() on the executor
    seconds: float  # the task's own duration
    sums: GradientSum | None
    error: str | None = None
    examples: int = 0
    #: "inline": ``sums`` here; "pushed": the driver holds them (step_signal.push); "cached": they stay in the
    #: task's cached partition (combining on the executors); "unwanted": the driver did not want them
    delivery: str = "inline"


@dataclass(frozen=True)
class BroadcastData:
    """Training data broadcast whole (``SyncSGD.fit`` on arrays): batch indices index it directly."""
    bc: object  # a Broadcast of (images uint8 (N, ...) of C x H x W pixels each, labels int64 (N,))

    def shard(self, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(images, labels, offset of shard k's first row): here the whole set, offset 0."""
        return (*self.bc.value, 0)

    def sizes(self) -> list[tuple[int, int]]:
        """[(shard, rows)] to walk for an evaluation: the whole set as one."""
        return [(0, len(self.bc.value[1]))]

    def partitions(self, sc, shards: int):
        """An RDD of shard numbers, partition k = shard k (every executor has the broadcast)."""
        return sc.parallelize(range(shards), shards)

    def ranges(self, sc, slices: int, chunk: int):
        """(shard, start, stop) row ranges for an evaluation, in ``slices`` tasks."""
        ranges = [(k, a, min(a + chunk, n)) for k, n in self.sizes() for a in range(0, n, chunk)]
        return sc.parallelize(ranges, min(len(ranges), slices))


@dataclass(frozen=True)
class TaskContext:
    """What every gradient task of a fit needs besides its batch, the parameters and the data."""
    model: base.Model
    spec: base.ParamSpec
    threads: int  # BLAS threads per task (spark.task.cpus)
    dropout: bool = True
    straggler: StragglerModel | None = None
    max_attempts: int = 1  # Spark's attempts per task (spark.task.maxFailures, or F of local[N,F])
    emulation: EmulatedCompute | None = None  # sleep instead of computing (benchmarks at scale)


# -- process set-up -----------------------------------------------------------------------------------
_tuned: int | None = None
_limiter = None


def tune_process(blas_threads: int) -> None:
    """Once per process: cap BLAS threads (N tasks on N cores must not oversubscribe); keep freed blocks. glibc
    returns every freed block above its mmap threshold to the kernel, so each step's 40 MB of temporaries page-fault
    again (~5 ms per 40 MB here). Raising the threshold keeps them in the heap; measured in benchmarks/kernel.py."""
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


def attempt_number() -> int:
    """This task attempt's number under Spark (0 for the first), else 0."""
    from pyspark import TaskContext as SparkTaskContext  # here only: this module imports no pyspark at load
    context = SparkTaskContext.get()
    return context.attemptNumber() if context is not None else 0


# -- the gradient -------------------------------------------------------------------------------------
def gradient_sum(model: base.Model, spec: base.ParamSpec, flat_params: np.ndarray, X: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator | None) -> GradientSum:
    """Sums over a scaled batch X (n, ...), y (n,); dropout on when ``rng`` is given. A model with state (batch
    norm) always computes in training mode: its batch statistics are part of the sums (``loop.update.update_state``)."""
    count = len(y)
    train = rng is not None or bool(getattr(model, "STATE", ()))
    loss, grads = model.loss_and_grads(base.unflatten(flat_params, spec), X, y, train=train, rng=rng, l2=0.0)
    grad_sum = base.flatten(grads, spec)  # (P,)
    grad_sum *= grad_sum.dtype.type(count)
    return GradientSum(grad_sum, loss * count, count)


def sum_batches(model: base.Model, spec: base.ParamSpec, flat_params: np.ndarray, images: np.ndarray,
                labels: np.ndarray, batches: Iterable[ShardBatch], dropout: bool,
                should_stop: Callable[[], bool] | None = None, offset: int = 0) -> GradientSum | None:
    """Sums over the uint8 ``images[batch.index - offset]`` of every batch, in ``flat_params``'s dtype; None if
    there are no batches, or when ``should_stop()`` (asked before each batch) says True."""
    total = None
    for batch in batches:
        if should_stop is not None and should_stop():
            return None
        if len(batch.index) == 0:
            part = GradientSum(np.zeros_like(flat_params), 0.0, 0)
        else:
            index = batch.index - offset if offset else batch.index  # (n,) rows of the given arrays
            X = data.scale_batch(images[index], flat_params.dtype.type, model.input_shape)  # (n, C, H, W)
            rng = batch.key.dropout_rng() if dropout else None
            part = gradient_sum(model, spec, flat_params, X, labels[index], rng)
        total = part if total is None else total + part
    return total


# -- task bodies (mapPartitions functions) ------------------------------------------------------------
# Each drains its input iterator first: only then does PySpark reuse the Python worker.
def shard_gradient(ctx: TaskContext, source: BroadcastData | StagedShards, flat_params: np.ndarray,
                   batches: list[ShardBatch], should_stop: Callable[[], bool] | None = None) -> GradientSum | None:
    """Sums over this task's batches (all of one shard) of the training data, after any straggler delay."""
    tune_process(ctx.threads)
    if ctx.straggler is not None:
        for batch in batches:
            ctx.straggler.sleep(batch.key, should_stop)
            ctx.straggler.fail_if_drawn(batch.key, attempt_number())
    if not batches:
        return None
    if ctx.emulation is not None:
        return emulated_sums(ctx.emulation, flat_params, batches, should_stop)
    images, labels, offset = source.shard(batches[0].key.shard)
    return sum_batches(ctx.model, ctx.spec, flat_params, images, labels, batches, ctx.dropout, should_stop, offset)


def emulated_sums(emulation: EmulatedCompute, flat_params: np.ndarray, batches: list[ShardBatch],
                  should_stop: Callable[[], bool] | None = None) -> GradientSum | None:
    """Sleep each batch's emulated compute time, then sums of the real size: a zero gradient (P,), the examples
    counted; None when ``should_stop`` (asked every 0.1 s: ~1,400 questions a second from 136 tasks, not
    the straggler delay's 100 a second each) says the step closed meanwhile."""
    for batch in batches:
        if not straggler.sleep(emulation.seconds(batch.key), should_stop, poll=EMULATION_POLL_SECONDS):
            return None
    return GradientSum(np.zeros_like(flat_params), 0.0, sum(len(b.index) for b in batches))


def _step_work(step_bc, partition: Iterator[int]) -> tuple[np.ndarray, list[ShardBatch]]:
    """(flat parameters (P,), this task's batches) of a step: the partition holds shard numbers, the step's
    broadcast holds the parameters and every shard's batch, so the RDD of shards serves every step."""
    shards = list(partition)
    flat_params, batches = step_bc.value
    return flat_params, [batches[k] for k in shards]


def step_task(ctx: TaskContext, source, step_bc, partition: Iterator[int]) -> Iterator[TaskReport]:
    """A plain synchronous step: this shard's sums, for ``treeReduce``."""
    started = time.perf_counter()
    total = shard_gradient(ctx, source, *_step_work(step_bc, partition))
    if total is not None:
        yield TaskReport(total, (os.getpid(),), (time.perf_counter() - started,))


def backup_task(ctx: TaskContext, source, step_bc, step: int, accumulator, signal: step_signal.Endpoint | None,
                stopped, partition: Iterator[int], keep: bool = False) -> Iterator:
    """A backup-worker step: a note of the sums goes to the accumulator as soon as they are ready, unless the
    driver closed the step meanwhile (then the task stops early, sends nothing and counts itself in ``stopped``).
    The sums themselves are pushed to the driver over the step signal's connection; without one, or when the
    push fails, they travel in the note. With ``keep`` they are this partition's output instead (cached until
    the driver has the kept tasks' sums added on the executors)."""
    flat_params, batches = _step_work(step_bc, partition)
    started = time.time()
    should_stop = partial(step_signal.is_closed, signal, step) if signal else None
    try:
        total = shard_gradient(ctx, source, flat_params, batches, should_stop)
        error = None
    except Exception as e:
        if attempt_number() + 1 < ctx.max_attempts:
            raise  # Spark runs it again
        # failed for good: the step counts it as a result that did not arrive (the job must not abort)
        total, error = None, f"{type(e).__name__}: {e}"
    if total is None and error is None and batches:  # told by the signal that its step is over
        stopped.add(1)
    if total is not None or error is not None:
        finished = time.time()
        examples = total.count if total is not None else 0
        sums, delivery = total, "inline"
        if keep:
            sums, delivery = None, "cached"
        elif total is not None and signal is not None:  # a gradient in an accumulator update outlives the task
            held = step_signal.push(signal, step, batches[0].key.shard, total.grad_sum, total.loss_sum, total.count)
            if held is not None:  # else it could not be sent: it goes inline
                sums, delivery = None, "pushed" if held else "unwanted"
        accumulator.add([BackupResult(step, batches[0].key.shard, finished, finished - started, sums, error,
                                      examples, delivery)])
    return iter([total]) if keep and total is not None else iter(())


def warm_task(ctx: TaskContext, source, params_bc, batch_size: int, partition: Iterator[int]) -> Iterator[TaskReport]:
    """A step on blank images, to ready a Python worker and the whole path of a step before the first one:
    imports, BLAS threads, the allocator's heap grown to a step's size, the broadcast of parameters, the
    return of a gradient-sized result and, given a ``source``, this shard's training data."""
    shards = list(partition)
    tune_process(ctx.threads)
    if source is not None:
        for k in shards:
            source.shard(k)  # the broadcast read, or the shard's files mapped
    shape = ctx.model.input_shape
    X = data.scale_batch(np.zeros((batch_size, *shape), np.uint8), shape=shape)  # (n, C, H, W)
    total = gradient_sum(ctx.model, ctx.spec, params_bc.value, X, np.zeros(batch_size, np.int64),
                         np.random.default_rng(0))
    yield TaskReport(total, (os.getpid(),))


def given_batch_task(ctx: TaskContext, params_bc, partition: Iterator[tuple[np.ndarray, np.ndarray]]):
    """Sums over scaled batches (X (n, ...), y (n,)) that travel with the task; no dropout."""
    tune_process(ctx.threads)
    for X, y in partition:
        yield TaskReport(gradient_sum(ctx.model, ctx.spec, params_bc.value, X, y, rng=None), (os.getpid(),))

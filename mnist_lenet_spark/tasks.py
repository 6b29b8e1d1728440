"""What runs inside Spark's Python workers: the gradient sum of a shard's mini-batch and the task bodies.

The single-process trainer calls the same functions in its own process. No pyspark import here:
broadcasts and accumulators arrive as arguments.
"""
from __future__ import annotations

import ctypes
import io
import logging
import math
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Iterator

import numpy as np

from . import data, files, step_signal
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
    """What a plain step's tasks send to ``treeReduce``: the sums, the PIDs of the workers that computed them
    (so reuse of Python workers can be checked) and each task's own seconds (Spark's overhead is the rest)."""
    sums: GradientSum
    pids: tuple[int, ...]
    seconds: tuple[float, ...] = ()

    def __add__(self, other: TaskReport) -> TaskReport:
        return TaskReport(self.sums + other.sums, self.pids + other.pids, self.seconds + other.seconds)


@dataclass(frozen=True)
class BackupResult:
    """What a backup-worker task adds to the step's accumulator: its sums, or the error of its last attempt."""
    step: int
    shard: int
    finished_at: float  # time.time() on the executor
    seconds: float  # the task's own duration
    sums: GradientSum | None
    error: str | None = None


@dataclass(frozen=True)
class BroadcastData:
    """Training data broadcast whole (``SyncSGD.fit`` on arrays): batch indices index it directly."""
    bc: object  # a Broadcast of (images uint8 (N, 28, 28), labels int64 (N,))

    def shard(self, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(images, labels, offset of shard k's first row): here the whole set, offset 0."""
        images, labels = self.bc.value
        return images, labels, 0

    def sizes(self) -> list[tuple[int, int]]:
        """[(shard, rows)] to walk for an evaluation: the whole set as one."""
        return [(0, len(self.bc.value[1]))]


@dataclass(frozen=True)
class StagedShards:
    """Training data staged as one pair of .npy files per shard (``staging.stage``), memory-mapped by tasks."""
    directory: str
    starts: tuple[int, ...]  # global index of each shard's first row
    counts: tuple[int, ...]  # rows of each shard

    def shard(self, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        images, labels = open_shard(self.directory, k)
        return images, labels, self.starts[k]

    def sizes(self) -> list[tuple[int, int]]:
        return list(enumerate(self.counts))


@dataclass(frozen=True)
class TaskContext:
    """What every gradient task of a fit needs besides its batch, the parameters and the data."""
    model: base.Model
    spec: base.ParamSpec
    threads: int  # BLAS threads per task (spark.task.cpus)
    dropout: bool = True
    straggler: StragglerModel | None = None
    max_attempts: int = 1  # Spark's attempts per task (spark.task.maxFailures, or F of local[N,F])


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


def attempt_number() -> int:
    """This task attempt's number under Spark (0 for the first), else 0."""
    from pyspark import TaskContext as SparkTaskContext  # here only: this module imports no pyspark at load
    context = SparkTaskContext.get()
    return context.attemptNumber() if context is not None else 0


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
            X = data.scale_batch(images[index], flat_params.dtype.type)  # (n, 1, 28, 28)
            rng = batch.key.dropout_rng() if dropout else None
            part = gradient_sum(model, spec, flat_params, X, labels[index], rng)
        total = part if total is None else total + part
    return total


def predict_images(model: base.Model, params: base.Params, images: np.ndarray, chunk: int = 500) -> np.ndarray:
    """Class probabilities (N, classes) of uint8 images (N, 28, 28), scaled and predicted ``chunk`` at a time
    (bounded memory), in the parameters' dtype."""
    dtype = next(iter(params.values())).dtype.type
    parts = [model.predict(params, data.scale_batch(images[i:i + chunk], dtype))  # (n, classes)
             for i in range(0, len(images), chunk)]
    return np.concatenate(parts) if parts else np.empty((0, 10), dtype)


def count_correct(model: base.Model, params: base.Params, images: np.ndarray, labels: np.ndarray,
                  chunk: int = 500) -> int:
    """How many uint8 images (N, 28, 28) the model classifies as ``labels`` (N,)."""
    return int(np.sum(np.argmax(predict_images(model, params, images, chunk), axis=1) == labels))


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
    images, labels, offset = source.shard(batches[0].key.shard)
    return sum_batches(ctx.model, ctx.spec, flat_params, images, labels, batches, ctx.dropout, should_stop, offset)


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
                partition: Iterator[int]) -> Iterator:
    """A backup-worker step: the sums go to the accumulator as soon as they are ready, unless the driver
    closed the step meanwhile (then the task stops early and sends nothing)."""
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
    if total is not None or error is not None:
        finished = time.time()
        accumulator.add([BackupResult(step, batches[0].key.shard, finished, finished - started, total, error)])
    return iter(())


def warm_task(ctx: TaskContext, source, params_bc, batch_size: int, partition: Iterator[int]) -> Iterator[TaskReport]:
    """A step on blank images, to ready a Python worker and the whole path of a step before the first one:
    imports, BLAS threads, the allocator's heap grown to a step's size, the broadcast of parameters, the
    return of a gradient-sized result and, given a ``source``, this shard's training data."""
    shards = list(partition)
    tune_process(ctx.threads)
    if source is not None:
        for k in shards:
            source.shard(k)  # the broadcast read, or the shard's files mapped
    X = data.scale_batch(np.zeros((batch_size, 28, 28), np.uint8))  # (n, 1, 28, 28)
    total = gradient_sum(ctx.model, ctx.spec, params_bc.value, X, np.zeros(batch_size, np.int64),
                         np.random.default_rng(0))
    yield TaskReport(total, (os.getpid(),))


def given_batch_task(ctx: TaskContext, params_bc, partition: Iterator[tuple[np.ndarray, np.ndarray]]):
    """Sums over scaled batches (X (n, ...), y (n,)) that travel with the task; no dropout."""
    tune_process(ctx.threads)
    for X, y in partition:
        yield TaskReport(gradient_sum(ctx.model, ctx.spec, params_bc.value, X, y, rng=None), (os.getpid(),))


def count_correct_task(ctx: TaskContext, source, params_bc, partition: Iterator[tuple[int, int, int]]):
    """Correct predictions over (shard, start, stop) row ranges of the data (positions within the shard)."""
    tune_process(ctx.threads)
    params = base.unflatten(params_bc.value, ctx.spec)
    correct = 0
    for k, a, b in partition:
        images, labels, _ = source.shard(k)
        correct += count_correct(ctx.model, params, images[a:b], labels[a:b])
    yield correct


# -- staging a DataFrame's rows as shard files (driver side: staging.py) ------------------------------
PIXELS = 28 * 28


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def row_pixels(features) -> np.ndarray | str:
    """uint8 (784,) from a Vector, a sequence of 784 numbers in 0..255 (rounded) or 784 bytes; else the problem."""
    if features is None:
        return "is null"
    if isinstance(features, (bytes, bytearray)):
        if len(features) != PIXELS:
            return f"has {len(features)} bytes, expected {PIXELS}"
        return np.frombuffer(features, np.uint8)
    try:
        values = features.toArray() if hasattr(features, "toArray") else np.asarray(features, np.float64)
    except (TypeError, ValueError):
        return "holds a null or a non-number"
    if values.shape != (PIXELS,):
        return f"has {values.size} values, expected {PIXELS}"
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 255:
        return f"has values outside 0..255 (min {values.min()}, max {values.max()})"
    return np.rint(values).astype(np.uint8)


def row_label(label) -> int | str:
    """The class 0..9 of a label given as an integer or an integral double; else the problem."""
    if label is None:
        return "is null"
    if isinstance(label, bool) or not isinstance(label, (int, float, np.integer, np.floating)):
        return f"is not a number: {_short(label)}"
    if not math.isfinite(label) or label != int(label):
        return f"is not a whole number: {label!r}"
    if not 0 <= label <= 9:
        return f"is outside 0..9: {label!r}"
    return int(label)


@dataclass(frozen=True)
class ShardWritten:
    """What writing one shard reports to the driver (an error instead of files when a row is bad)."""
    shard: int
    count: int
    error: str | None = None  # "row I: column 'C' PROBLEM (example)" for the first bad row
    error_row: int = -1


def convert_rows(features_col: str, label_col: str, edges: np.ndarray, first_index: list[int], partition: int,
                 rows: Iterator) -> Iterator[tuple[int, tuple]]:
    """(shard, (global row index, label, 784 pixel bytes | error)) for each row of one input partition.

    Row ``i`` of the DataFrame belongs to shard ``k`` when ``edges[k] <= i < edges[k + 1]``; the
    global index is this partition's ``first_index`` plus the row's position in it.
    """
    for i, row in enumerate(rows, first_index[partition]):
        shard = int(np.searchsorted(edges, i, side="right")) - 1
        pixels, label = row_pixels(row[features_col]), row_label(row[label_col])
        problem = None
        if isinstance(pixels, str):
            problem = f"column '{features_col}' {pixels}"
        elif isinstance(label, str):
            problem = f"column '{label_col}' {label}"
        if problem:
            example = f"{label_col}={_short(row[label_col])}, {features_col}={_short(row[features_col])}"
            yield shard, (i, None, f"row {i}: {problem} (example row: {example})")
        else:
            yield shard, (i, label, pixels.tobytes())


def shard_paths(directory: str, k: int) -> tuple[str, str]:
    return f"{directory}/shard-{k:05d}-images.npy", f"{directory}/shard-{k:05d}-labels.npy"


def write_shard(directory: str, k: int, items: Iterator[tuple[int, tuple]]) -> Iterator[ShardWritten]:
    """Write shard ``k``'s rows, in global index order, as images uint8 (n, 28, 28) and labels int64 (n,)."""
    rows = sorted(item for _, item in items)  # by global index: the DataFrame's order
    bad = [(i, problem) for i, label, problem in rows if label is None]
    if bad:
        yield ShardWritten(k, len(rows), bad[0][1], bad[0][0])
        return
    images = np.frombuffer(b"".join(pixels for _, _, pixels in rows), np.uint8).reshape(-1, 28, 28)
    labels = np.array([label for _, label, _ in rows], np.int64)
    for path, array in zip(shard_paths(directory, k), (images, labels)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        files.write_atomically(path, buffer.getvalue())
    yield ShardWritten(k, len(rows))


_open_shards: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}


def open_shard(directory: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Shard ``k``'s (images, labels), memory-mapped once per Python worker and kept while it is reused."""
    key = (directory, k)
    if key not in _open_shards:
        for other in [o for o in _open_shards if o[0] != directory]:  # an earlier fit's shards
            del _open_shards[other]
        images_path, labels_path = shard_paths(directory, k)
        _open_shards[key] = np.load(images_path, mmap_mode="r"), np.load(labels_path, mmap_mode="r")
    return _open_shards[key]


# -- inference (LeNetClassificationModel.transform) ----------------------------------------------------
def predict_pixels(model: base.Model, params: base.Params, features, chunk: int = 500):
    """(prediction (n,), probability (n, classes), log-probability (n, classes)) for a pandas Series of
    features (Vectors as arrays, number sequences or 784-byte binaries)."""
    pixels = [row_pixels(f) for f in features]
    bad = next((p for p in pixels if isinstance(p, str)), None)
    if bad is not None:
        raise ValueError(f"features {bad}")
    images = np.stack(pixels).reshape(-1, 28, 28) if pixels else np.empty((0, 28, 28), np.uint8)
    probs = predict_images(model, params, images, chunk).astype(np.float64)  # (n, classes)
    return np.argmax(probs, axis=1).astype(np.float64), probs, np.log(np.maximum(probs, 1e-300))

"""The long task of the one-job engine (``cluster.one_job``): one per shard, in one Spark job of ``mapInArrow``, it
holds its input partition (its shard: ``cluster.one_job.shard_frame`` cut it) and loops pull, gradient, push
against the coordinator (``cluster.async_service.ParameterServer``) until told to stop.

- synchronous: the task waits for each new version, computes the mini-batch of that step (the per-step engine's
  batch of its shard: ``sharding.epoch_batches``) and pushes; the coordinator keeps the first N of the N + b pushes
  of a version and refuses the late ones, whose tasks go on at once with the next version.
- asynchronous: as ``async_task``: its shard's next mini-batch at whatever version it pulled.
A bad row is sent to the coordinator as the run's error (one line naming the row). No pyspark import here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from mnist_lenet_spark.executor import rows, tasks
from mnist_lenet_spark.executor.async_task import ShardBatches, long_task, push_loop
from mnist_lenet_spark.loop import sharding
from mnist_lenet_spark.wire import parameters

ROW = "_row"  # the frame's column of global row numbers (its order, as staging numbers the rows)
REPORT_SCHEMA = "shard long, attempt long, pushes long, refused long, pid long, ended string"  # AsyncReport's


@dataclass(frozen=True)
class HeldShard:
    """One shard's rows held in the task's memory: uint8 images (n, C, H, W), labels (n,), global row of the first."""
    images: np.ndarray
    labels: np.ndarray
    offset: int

    def shard(self, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        return self.images, self.labels, self.offset


@dataclass(frozen=True)
class JobPlan:
    """What every task of the job is told: the columns, the shards' cut, the mode."""
    features_col: str
    label_col: str
    input_shape: tuple[int, int, int]
    classes: int
    pixel_range: str
    walk: ShardBatches  # how the shards are cut and walked (their count: walk.shards)
    synchronous: bool

    def step_batch(self, version: int, shard: int, cache: dict) -> sharding.ShardBatch:
        """Shard ``shard``'s mini-batch of global step ``version``: the per-step engine's (one epoch kept in
        ``cache``)."""
        w = self.walk
        epoch, s = divmod(version, sharding.steps_per_epoch(w.num_examples, w.shards, w.batch_size))
        if cache.get("epoch") != epoch:
            cache["epoch"] = epoch
            cache["batches"] = sharding.epoch_batches(w.num_examples, w.shards, w.batch_size, w.seed, epoch)
        return cache["batches"][s][shard]


def hold_partition(plan: JobPlan, table) -> HeldShard | str:
    """The partition's rows (a pyarrow Table of ROW, features and label) as its shard, sorted by row, or the problem
    with them ("row I: column 'C' ..."); checks that they are exactly one shard's rows."""
    table = table.take(np.argsort(table.column(ROW).to_numpy()))
    row_numbers = table.column(ROW).to_numpy()  # (n,) ascending
    arrays = table_arrays(plan, table, row_numbers)
    if isinstance(arrays, str):
        return arrays
    if plan.pixel_range == "0..255" and len(row_numbers) and arrays[0].max() <= 1:
        return (f"column '{plan.features_col}': every pixel of the {len(row_numbers)} rows of a shard is 0 or 1 out "
                f"of 0..255; pixels scaled to 0..1 need pixelRange '0..1' (--pixel-range 0..1)")
    start = int(row_numbers[0]) if len(row_numbers) else 0
    if not np.array_equal(row_numbers, np.arange(start, start + len(row_numbers))):
        raise RuntimeError(f"the partition's rows are not one shard's (rows {row_numbers[:3]}...)")
    return HeldShard(*arrays, start)


def table_arrays(plan: JobPlan, table, row_numbers) -> tuple[np.ndarray, np.ndarray] | str:
    """(uint8 images (n, C, H, W), int64 labels (n,)) of a pyarrow Table's features and label columns, or the problem
    of the first bad row found ("row I: column 'C' ...", I from ``row_numbers``)."""
    pixels = int(np.prod(plan.input_shape))
    labels = table.column(plan.label_col).combine_chunks()
    features = table.column(plan.features_col).combine_chunks()

    def bad(i: int, column: str, problem: str) -> str:  # the first bad row's problem, as staging words it
        example = rows.example_row({plan.label_col: labels[i].as_py(), plan.features_col: features[i].as_py()},
                                   plan.features_col, plan.label_col)
        return f"row {row_numbers[i]}: column '{column}' {problem} ({example})"
    if labels.null_count:
        return bad(int(np.flatnonzero(~np.asarray(labels.is_valid()))[0]), plan.label_col, "is null")
    label_values = labels.to_numpy(zero_copy_only=False)
    images = _pixels(features, pixels, plan.pixel_range)
    if isinstance(images, tuple):
        return bad(*images[:1], plan.features_col, images[1])
    for i, value in enumerate(label_values):
        label = rows.row_label(value.item(), plan.classes)
        if isinstance(label, str):
            return bad(i, plan.label_col, label)
    return images.reshape(-1, *plan.input_shape), label_values.astype(np.int64)  # (n, C, H, W), (n,)


def _pixels(features, pixels: int, pixel_range: str) -> np.ndarray | tuple[int, str]:
    """uint8 (n, pixels) from an Arrow column of binaries or of number lists, or (row position, problem)."""
    import pyarrow as pa
    n = len(features)
    if features.null_count:
        return int(np.flatnonzero(~np.asarray(features.is_valid()))[0]), "is null"
    if pa.types.is_binary(features.type) or pa.types.is_large_binary(features.type):
        values = features.to_pylist()
        for i, value in enumerate(values):
            if len(value) != pixels:
                return i, f"has {len(value)} bytes, expected {pixels}"
        flat = np.frombuffer(b"".join(values), np.uint8) if n else np.empty(0, np.uint8)
    else:
        lengths = features.value_lengths().to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(lengths != pixels)
        if wrong.size:
            return int(wrong[0]), f"has {lengths[wrong[0]]} values, expected {pixels}"
        values = features.flatten()
        if values.null_count:
            return int(np.flatnonzero(~np.asarray(values.is_valid()))[0]) // pixels, "holds a null or a non-number"
        flat = values.to_numpy(zero_copy_only=False)
    grid = flat.reshape(n, pixels)  # (n, pixels)
    result = rows.as_pixels(grid, pixel_range)
    if not isinstance(result, str):
        return result
    for i in range(n):  # which row: the first one that fails alone
        problem = rows.as_pixels(grid[i], pixel_range)
        if isinstance(problem, str):
            return i, problem
    return 0, result


def one_job_task(ctx: tasks.TaskContext, endpoint: parameters.Endpoint, plan: JobPlan,
                 batches: Iterator) -> Iterator:
    """mapInArrow body: hold the partition's shard, then pull, gradient, push until told to stop
    (``async_task.long_task``); one report row (REPORT_SCHEMA). A bad row is sent to the coordinator instead."""
    import pyarrow as pa
    table = pa.Table.from_batches(list(batches))  # drained: the whole partition is the shard
    if table.num_rows == 0:
        return
    first = int(np.min(table.column(ROW).to_numpy()))
    bounds = sharding.shard_bounds(plan.walk.num_examples, plan.walk.shards)
    shard = next(k for k, (a, b) in enumerate(bounds) if a <= first < b)
    held = hold_partition(plan, table)
    del table

    def work(client: parameters.AsyncClient) -> tuple[int, int, str]:
        if isinstance(held, str):
            client.fail(held)
            return 0, 0, held
        if plan.synchronous:  # each new version's step batch
            cache: dict = {}
            return push_loop(ctx, held, client, lambda version: plan.step_batch(version, shard, cache), True)
        walk = plan.walk.batches(shard, client.position)  # the shard's next mini-batch, whatever the version
        return push_loop(ctx, held, client, lambda version: next(walk), False)
    report = long_task(ctx, endpoint, shard, work)
    yield pa.RecordBatch.from_pylist([dataclasses.asdict(report)])

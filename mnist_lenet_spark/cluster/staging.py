"""Staging a DataFrame's training rows as shard files on the executors' side, without the driver holding them.

Row ``i`` (in the DataFrame's order) goes to shard ``k`` when it falls in ``sharding.shard_bounds``' block ``k``,
the blocks ``SyncSGD.fit`` cuts from arrays: both train on the same batches. One job counts each input partition;
one more converts and checks every row where it lies, shuffles the rows (C x H x W bytes each) to their shard and
writes each shard once as two ``.npy`` files (``shards.write_shard``); only per-shard reports (or the first bad row)
reach the driver.

By default the files go into the local directory of the executor that wrote them: no shared filesystem needed. The
RDD of reports is cached, so every step's task for shard ``k`` is sent where report ``k`` is cached, where the files
are; a lost executor takes its cached reports along, and Spark recomputes them (from lineage) on another executor,
which writes the files again. A task that runs elsewhere (its executor busy past ``spark.locality.wait``) raises
``shards.ShardMissing`` and Spark runs it again. A ``staging_dir`` puts the files in a folder every executor mounts,
or in a store every executor reaches by URL (``s3://bucket/prefix``, through fsspec).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from mnist_lenet_spark.cluster import paths, task_errors
from mnist_lenet_spark.data import MNIST_CLASSES, MNIST_SHAPE, DataError
from mnist_lenet_spark.executor import rows as row_conversion
from mnist_lenet_spark.executor import shards
from mnist_lenet_spark.loop import sharding

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedData:
    source: shards.StagedShards
    num_examples: int
    seconds: float  # the staging pass, for reports
    places: tuple[int, ...] = ()  # shards per executor that holds any, most first (balance, for reports)


def check_columns(df, features_col: str, label_col: str | None, pixels: int = int(np.prod(MNIST_SHAPE)),
                  classes: int = MNIST_CLASSES) -> None:
    """Raise DataError naming the column when it is missing or of a type the trainer cannot read."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import ArrayType, BinaryType, NumericType
    fields = {f.name: f.dataType for f in df.schema.fields}
    for name, kind in [(features_col, "features"), (label_col, "label")]:
        if name is None:
            continue
        if name not in fields:
            raise DataError(f"column '{name}' ({kind}) not found; the DataFrame has {', '.join(fields) or 'none'}")
        t = fields[name]
        ok = (isinstance(t, NumericType) if kind == "label" else isinstance(t, (VectorUDT, BinaryType))
              or isinstance(t, ArrayType) and isinstance(t.elementType, NumericType))
        if not ok:
            expected = (f"an integer or double 0..{classes - 1}" if kind == "label" else
                        f"a Vector, an array of numbers or binary ({pixels} pixels)")
            raise DataError(f"column '{name}' ({kind}) has type {t.simpleString()}; expected {expected}")


def staging_directory(base: str | None) -> str:
    """A new name for one fit's shards: relative (inside each executor's local directory) by default, or a new
    folder under ``base``: a plain path every executor mounts, or a store's URL (``fit_dataframes`` checks
    that the executors share it)."""
    name = f"lenet-shards-{uuid.uuid4().hex[:12]}"
    if not base:
        return name
    parsed = urlparse(base)
    if parsed.scheme not in ("", "file"):
        return f"{base.rstrip('/')}/{name}"
    root = Path(parsed.path if parsed.scheme else base)
    if not root.is_absolute():
        raise DataError(f"staging directory {base}: give an absolute path (every executor resolves it alike)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"staging directory {base}: cannot create it ({e.strerror})") from None
    return str(root / name)


def stage(df, features_col: str, label_col: str, shard_count: int, directory: str,
          input_shape: tuple[int, int, int] = MNIST_SHAPE, classes: int = MNIST_CLASSES,
          pixel_range: str = "0..255") -> StagedData:
    """Write ``df``'s rows as ``shard_count`` shard files named ``directory`` (see ``staging_directory``) and cache
    the RDD of their reports; each row holds one (C, H, W) = ``input_shape`` image, channel-major, with numeric
    features in ``pixel_range`` (``rows.PIXEL_RANGES``), and a label 0 .. classes - 1. DataError on a bad column or
    row. ``unstage`` removes them."""
    from pyspark import StorageLevel
    pixels = int(np.prod(input_shape))
    try:
        row_conversion.check_pixel_range(pixel_range)
    except ValueError as e:
        raise DataError(f"column '{features_col}': {e}") from None
    check_columns(df, features_col, label_col, pixels, classes)
    t0 = time.perf_counter()
    rows = df.select(features_col, label_col).rdd
    try:
        counts = rows.mapPartitions(lambda it: [sum(1 for _ in it)]).collect()  # rows of each input partition
    except Exception as e:
        problem = task_errors.input_problem(e)
        if problem is None:
            raise
        raise DataError(problem) from None
    n = int(sum(counts))
    if n < shard_count:
        raise DataError(f"{shard_count} shards need at least {shard_count} rows, the DataFrame has {n}")
    edges = np.array([a for a, _ in sharding.shard_bounds(n, shard_count)] + [n])
    first_index = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    tokens = (rows.mapPartitionsWithIndex(partial(row_conversion.convert_rows, features_col, label_col, edges,
                                                  first_index, pixels, classes, pixel_range))
              .partitionBy(shard_count, lambda k: k)
              .mapPartitionsWithIndex(partial(shards.write_shard, directory, tuple(input_shape)))
              .persist(StorageLevel.MEMORY_ONLY))  # a few bytes a shard: where each shard's files are
    try:
        reports = sorted(tokens.collect(), key=lambda r: r.shard)
        bad = [r for r in reports if r.error]
        if bad:
            raise DataError(min(bad, key=lambda r: r.error_row).error)
        if pixel_range == "0..255" and max(r.max_pixel for r in reports) <= 1:
            raise DataError(f"column '{features_col}': every pixel of the {n} rows is 0 or 1 out of 0..255; "
                            f"pixels scaled to 0..1 need pixelRange '0..1' (--pixel-range 0..1)")
    except BaseException:
        unstage(tokens.context, shards.StagedShards(directory, (), (), tokens))  # whatever was written
        raise
    seconds = time.perf_counter() - t0
    places = tuple(sorted(Counter(r.place for r in reports).values(), reverse=True))
    log.info("staged %d rows as %d shards in %.1f s; shards per executor: %s", n, shard_count, seconds, list(places))
    starts, counts = tuple(int(a) for a in edges[:-1]), tuple(r.count for r in reports)
    return StagedData(shards.StagedShards(directory, starts, counts, tokens), n, seconds, places)


def unstage(sc, staged: shards.StagedShards) -> None:
    """Remove a fit's shard files wherever they are, and forget the cached reports (best effort: Spark also
    removes its executors' local directories when the application ends)."""
    top = staged.directory
    if not (shards.is_url(top) or os.path.isabs(top)):
        top = top.split("/", 1)[0]
    try:
        if shards.is_url(top):  # in a task: the executors hold the store's credentials
            sc.setJobDescription("staging: remove shard files")
            sc.parallelize([top], 1).foreach(shards.remove_url)
        elif os.path.isabs(top):
            shutil.rmtree(top, ignore_errors=True)
        elif sc._jsc is not None:  # the cleanup tasks run where the cached reports, and so the files, are
            sc.setJobDescription("staging: remove shard files")
            staged.tokens.mapPartitions(partial(shards.remove_local, top)).count()
    except Exception as e:  # cleanup must not hide the error that brought us here
        log.warning("could not remove the staged shards %s: %s", staged.directory, str(e).splitlines()[0])
    finally:
        if sc._jsc is not None:
            staged.tokens.unpersist()


def fit_dataframes(sgd, train_df, validation_df, features_col: str, label_col: str, staging_dir: str | None = None,
                   pixel_range: str = "0..255", **fit_options):
    """Stage ``train_df`` (and ``validation_df``, if any) as shards and train ``sgd`` on them; the staged files
    are removed afterwards, also when the fit fails. Returns (FitResult, seconds spent staging)."""
    if staging_dir and paths.local_path(staging_dir) is None:
        paths.check_store_writable(sgd.sc, staging_dir, "staging directory")
    elif staging_dir:
        paths.check_writable_together(sgd.sc, staging_dir, "staging directory")
    directory = staging_directory(staging_dir)
    sgd.start_warm_up()  # readies the Python workers while the shards are written
    staged = []
    image = {"input_shape": sgd.model.input_shape, "classes": sgd.model.classes,  # what the model takes
             "pixel_range": pixel_range}
    try:
        train = stage(train_df, features_col, label_col, sgd.shards, directory + "/train", **image)
        staged.append(train.source)
        validation = (stage(validation_df, features_col, label_col, sgd.workers, directory + "/validation", **image)
                      if validation_df is not None else None)
        if validation:
            staged.append(validation.source)
        result = sgd.fit_data(train.source, train.num_examples,
                              validation=validation.source if validation else None, **fit_options)
    finally:
        for source in staged:
            unstage(sgd.sc, source)
        if os.path.isabs(directory):
            shutil.rmtree(directory, ignore_errors=True)
    return result, train.seconds + (validation.seconds if validation else 0.0)

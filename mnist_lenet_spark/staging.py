"""Staging a DataFrame's training rows as shard files on the executors' side, without the driver holding them.

Row ``i`` (in the DataFrame's order) goes to shard ``k`` when it falls in ``sharding.shard_bounds``'
block ``k``: the same contiguous blocks ``SyncSGD.fit`` cuts from arrays, so both train on the
same batches. One job counts each input partition; one more converts and checks every row where
it lies, shuffles the rows (784 bytes each) to their shard, and writes each shard once as two
``.npy`` files that the gradient tasks memory-map. Only per-shard counts (or the first bad row)
come back to the driver.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from . import sharding, tasks
from .data import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedData:
    source: tasks.StagedShards
    num_examples: int
    seconds: float  # the staging pass, for reports


def check_columns(df, features_col: str, label_col: str | None) -> None:
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
        ok = (isinstance(t, NumericType) if kind == "label" else
              isinstance(t, (VectorUDT, BinaryType)) or isinstance(t, ArrayType) and isinstance(t.elementType,
                                                                                                NumericType))
        if not ok:
            expected = ("an integer or double 0..9" if kind == "label" else
                        "a Vector, an array of numbers or binary (784 pixels 0..255)")
            raise DataError(f"column '{name}' ({kind}) has type {t.simpleString()}; expected {expected}")


def staging_directory(base: str | None) -> str:
    """A new folder for one fit's shards: under ``base`` (a path every executor can read), else a temp dir."""
    if base:
        parsed = urlparse(base)
        if parsed.scheme not in ("", "file"):
            raise DataError(f"staging directory {base}: only local or mounted shared paths are supported, "
                            f"not {parsed.scheme}://")
        root = Path(parsed.path if parsed.scheme else base)
        root.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix="lenet-shards-", dir=root)
    return tempfile.mkdtemp(prefix="lenet-shards-")


def stage(df, features_col: str, label_col: str, shards: int, directory: str) -> StagedData:
    """Write ``df``'s rows as ``shards`` shard files in ``directory``; DataError on a bad column or row."""
    check_columns(df, features_col, label_col)
    t0 = time.perf_counter()
    rows = df.select(features_col, label_col).rdd
    counts = rows.mapPartitions(lambda it: [sum(1 for _ in it)]).collect()  # rows of each input partition
    n = int(sum(counts))
    if n < shards:
        raise DataError(f"{shards} shards need at least {shards} rows, the DataFrame has {n}")
    edges = np.array([a for a, _ in sharding.shard_bounds(n, shards)] + [n])
    first_index = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    reports = (rows.mapPartitionsWithIndex(partial(tasks.convert_rows, features_col, label_col, edges, first_index))
               .partitionBy(shards, lambda k: k)
               .mapPartitionsWithIndex(partial(tasks.write_shard, directory))
               .collect())
    reports.sort(key=lambda r: r.shard)
    bad = [r for r in reports if r.error]
    if bad:
        raise DataError(min(bad, key=lambda r: r.error_row).error)
    seconds = time.perf_counter() - t0
    log.info("staged %d rows as %d shards in %s (%.1f s)", n, shards, directory, seconds)
    starts = tuple(int(a) for a in edges[:-1])
    return StagedData(tasks.StagedShards(directory, starts, tuple(r.count for r in reports)), n, seconds)


def remove(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def fit_dataframes(sgd, train_df, validation_df, features_col: str, label_col: str, staging_dir: str | None = None,
                   **fit_options):
    """Stage ``train_df`` (and ``validation_df``, if any) as shards and train ``sgd`` on them; the staged files
    are removed afterwards. Returns (FitResult, seconds spent staging)."""
    directory = staging_directory(staging_dir)
    sgd.start_warm_up()  # readies the Python workers while the shards are written
    try:
        train = stage(train_df, features_col, label_col, sgd.workers + sgd.backup.workers, directory + "/train")
        validation = (stage(validation_df, features_col, label_col, sgd.workers, directory + "/validation")
                      if validation_df is not None else None)
        result = sgd.fit_data(train.source, train.num_examples,
                              validation=validation.source if validation else None, **fit_options)
    finally:
        remove(directory)
    return result, train.seconds + (validation.seconds if validation else 0.0)

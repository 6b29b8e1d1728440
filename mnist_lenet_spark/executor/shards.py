"""Staged shards on the executors' side: one fit's rows as a pair of ``.npy`` files per shard, which the gradient tasks
memory-map; imports no pyspark. By default a shard's files live in the local directory of the executor that wrote them
(Spark's ``SPARK_LOCAL_DIRS``, which Spark itself removes with the application); ``StagedShards.directory`` is then a
relative name, resolved on each executor. The cached RDD of ``ShardWritten`` reports (``StagedShards.tokens``, driver
side) keeps each shard's tasks on that executor (cache locality), and Spark recomputes a lost executor's shard from
lineage on another one. With an absolute ``directory`` (a folder every executor mounts) or a URL of a store every
executor reaches (``s3://``, ``gs://``, ``hdfs://``: read and written through fsspec, as Horovod's Store and Petastorm
do) the files are wherever a task runs."""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from mnist_lenet_spark import files


class ShardMissing(RuntimeError):
    """A task ran on an executor that does not hold its shard (Spark runs the task again, where it is)."""


@dataclass(frozen=True)
class ShardWritten:
    """What writing one shard reports to the driver (an error instead of files when a row is bad)."""
    shard: int
    count: int
    place: str = ""  # the local directory of the executor that wrote it: one per executor
    error: str | None = None  # "row I: column 'C' PROBLEM (example)" for the first bad row
    error_row: int = -1
    max_pixel: int = 0  # the brightest pixel: a whole data set of 0s and 1s was almost surely scaled to 0..1


def local_root() -> str:
    """This executor's own local directory (the first of SPARK_LOCAL_DIRS; the temp folder outside Spark)."""
    dirs = os.environ.get("SPARK_LOCAL_DIRS", "")
    return dirs.split(",")[0] if dirs else tempfile.gettempdir()


def is_url(directory: str) -> bool:
    """Whether ``directory`` names a store by URL (``s3://bucket/prefix``), read and written through fsspec."""
    return "://" in directory


def resolve(directory: str) -> str:
    """A URL or an absolute ``directory`` as it is; a relative one inside this executor's local directory."""
    if is_url(directory) or os.path.isabs(directory):
        return directory
    return os.path.join(local_root(), directory)


def write_file(path: str, data: bytes) -> None:
    """``data`` as the file or object ``path``, whole or not at all."""
    if is_url(path):
        import fsspec
        with fsspec.open(path, "wb") as f:  # an object store makes the object visible whole, at close
            f.write(data)
    else:
        files.write_atomically(path, data)  # a recomputed shard replaces the file whole


def _load(path: str) -> np.ndarray:
    """A shard array: memory-mapped from a local file, read whole from a store."""
    if not is_url(path):
        return np.load(path, mmap_mode="r")
    import fsspec
    with fsspec.open(path, "rb") as f:
        return np.load(io.BytesIO(f.read()))


def shard_paths(directory: str, k: int) -> tuple[str, str]:
    folder = resolve(directory)
    return f"{folder}/shard-{k:05d}-images.npy", f"{folder}/shard-{k:05d}-labels.npy"


def write_shard(directory: str, shape: tuple[int, int, int], k: int,
                items: Iterator[tuple[int, tuple]]) -> Iterator[ShardWritten]:
    """Write shard ``k``'s rows, in global index order, as images uint8 (n, C, H, W) = (n, *shape) and labels
    int64 (n,)."""
    rows = sorted(item for _, item in items)  # by global index: the DataFrame's order
    bad = [(i, problem) for i, label, problem in rows if label is None]
    if bad:
        yield ShardWritten(k, len(rows), local_root(), bad[0][1], bad[0][0])
        return
    images = np.frombuffer(b"".join(pixels for _, _, pixels in rows), np.uint8).reshape(-1, *shape)  # (n, C, H, W)
    labels = np.array([label for _, label, _ in rows], np.int64)
    for path, array in zip(shard_paths(directory, k), (images, labels)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        write_file(path, buffer.getvalue())
    yield ShardWritten(k, len(rows), local_root(), max_pixel=int(images.max()) if images.size else 0)


def remove_local(top: str, partition: Iterator) -> Iterator:
    """Task body: delete one fit's shard folder ``top`` from this executor (the cleanup job's tasks run
    where the shards are)."""
    list(partition)  # drained: the Python worker is reused
    shutil.rmtree(resolve(top), ignore_errors=True)
    _open_shards.clear()
    return iter(())


def remove_url(url: str) -> None:
    """Delete everything under ``url`` in its store (run in a task: it needs the executors' credentials)."""
    import fsspec
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


_open_shards: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}


def open_shard(directory: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Shard ``k``'s (images, labels), memory-mapped once per Python worker and kept while it is reused;
    ShardMissing when this executor does not hold it."""
    key = (directory, k)
    if key not in _open_shards:
        for other in [o for o in _open_shards if o[0] != directory]:  # an earlier fit's shards
            del _open_shards[other]
        images_path, labels_path = shard_paths(directory, k)
        try:
            _open_shards[key] = _load(images_path), _load(labels_path)
        except FileNotFoundError:
            if is_url(directory):
                raise FileNotFoundError(f"shard {k} is missing from {directory} (removed while training?)") from None
            raise ShardMissing(f"shard {k} is not on this executor ({local_root()}): the task ran away from "
                               f"the executor that staged it") from None
    return _open_shards[key]


@dataclass(frozen=True)
class StagedShards:
    """Training data staged as one pair of .npy files per shard (``staging.stage``), memory-mapped by tasks."""
    directory: str  # relative: in each executor's local directory; absolute: a folder all mount; or a store's URL
    starts: tuple[int, ...]  # global index of each shard's first row
    counts: tuple[int, ...]  # rows of each shard
    tokens: object = field(default=None, compare=False, repr=False)  # driver only: the cached RDD of reports

    def __reduce__(self):  # tasks get the description; the RDD stays on the driver
        return StagedShards, (self.directory, self.starts, self.counts)

    def shard(self, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        images, labels = open_shard(self.directory, k)
        return images, labels, self.starts[k]

    def sizes(self) -> list[tuple[int, int]]:
        return list(enumerate(self.counts))

    def partitions(self, sc, shards: int):
        """An RDD of shard numbers, partition k = shard k, whose tasks Spark runs where shard k is cached."""
        if shards != len(self.counts):
            raise ValueError(f"{len(self.counts)} shards staged, {shards} asked for")
        return self.tokens.map(lambda report: report.shard)

    def ranges(self, sc, slices: int, chunk: int):
        """(shard, start, stop) row ranges for an evaluation, each shard's in the task that runs where it is."""
        counts = self.counts
        return self.tokens.flatMap(lambda r: [(r.shard, a, min(a + chunk, counts[r.shard]))
                                              for a in range(0, counts[r.shard], chunk)])

"""Whether the executors see a path as the driver does: on a cluster a plain (``file:``) path names a different
folder on every host, so a path that only the driver has is bad input, found before any work is done.
Paths with a scheme (``hdfs://``, ``s3a://``, ...) name one store for everyone; where our own Python writes to
one (a staging URL, through fsspec), an executor tries it first (``check_store_writable``).

Each check takes a SparkSession, classic or Spark Connect, or a SparkContext, and runs the same way on both: its
tasks are a small Spark job (``_on_executors``: RDD tasks on a classic session, ``mapInArrow`` tasks on Spark
Connect, which has no SparkContext), and what the driver sees is listed by Spark's driver itself
(``hadoop_files``), which on Spark Connect is the server, not this process."""
from __future__ import annotations

import glob
import logging
import os
import shutil
import socket
import uuid
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlparse

from mnist_lenet_spark.cluster.one_job import is_connect
from mnist_lenet_spark.data import DataError

log = logging.getLogger(__name__)
HINT = "on a cluster use a path every host reads (hdfs://, s3a://, gs://, or a folder every host mounts)"
#: the probe files' names start so: not with "." or "_", names that a DataFrame read's listing leaves out
PROBE = "lenet-probe"


def local_path(path: str) -> str | None:
    """The local filesystem path of a plain or ``file:`` path; None for any other scheme."""
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return parsed.path
    return path if parsed.scheme == "" else None


def hadoop_files(spark, pattern: str) -> list[str]:
    """The files that a Hadoop glob matches, listed by Spark's driver (so hdfs://, s3a:// ... work), as Hadoop
    paths (``file:/a b``). Classic: its JVM's ``globStatus``. Spark Connect: a DataFrame read's file listing
    (``inputFiles``: no task, nothing read), which leaves out names starting with ``.`` or ``_`` and gives the files
    under a folder that the glob matches."""
    if not is_connect(spark):
        sc = _context(spark)
        jvm, jsc = sc._jvm, sc._jsc
        path = jvm.org.apache.hadoop.fs.Path(pattern)
        statuses = path.getFileSystem(jsc.hadoopConfiguration()).globStatus(path)
        return sorted(str(s.getPath().toString()) for s in statuses or [] if s.isFile())
    from pyspark.errors import AnalysisException
    try:
        uris = spark.read.format("binaryFile").load(pattern).inputFiles()
    except AnalysisException as e:
        if e.getCondition() == "PATH_NOT_FOUND":  # also a glob that matches nothing
            return []
        raise
    return sorted(unquote(u).replace("file:///", "file:/", 1) for u in uris)  # URIs (file:///a%20b) as paths


def _context(spark):
    """A classic SparkSession's SparkContext, or ``spark`` when it is one."""
    return getattr(spark, "sparkContext", spark)


def _on_cluster(spark) -> bool:
    # local[N] and local-cluster[...] run every executor on the driver's machine and filesystem
    master = spark.conf.get("spark.master", "") if is_connect(spark) else _context(spark).master
    return not master.startswith("local")


def _on_executors(spark, body, tasks: int = 0) -> list[str]:
    """The strings ``body(index, partition)`` returns in each of ``tasks`` Spark tasks (by default twice the default
    parallelism: enough to reach every executor), in task order; ``body`` drains ``partition``."""
    if not is_connect(spark):
        sc = _context(spark)
        count = tasks or max(2 * sc.defaultParallelism, 2)
        return sc.parallelize(range(count), count).mapPartitionsWithIndex(body).collect()

    def task(batches):
        import pyarrow
        from pyspark import TaskContext
        out = body(TaskContext.get().partitionId(), batches)
        yield pyarrow.RecordBatch.from_pydict({"out": out}, pyarrow.schema([("out", pyarrow.string())]))
    if tasks:
        rows = spark.range(0, tasks, numPartitions=tasks)
    else:  # a range comes in the default parallelism's partitions, two of them in twice as many (no SparkContext)
        rows = spark.range(0, 1 << 12)
        rows = rows.union(rows)
    return [row[0] for row in rows.mapInArrow(task, "out string").collect()]


def _describe(spark, text: str) -> None:
    if not is_connect(spark):  # a Spark Connect session has no job description
        _context(spark).setJobDescription(text)


def _host() -> str:
    return os.environ.get("SPARK_LOCAL_IP") or socket.gethostname()


def _sees(pattern: str, index: int, partition) -> list[str]:
    """Task body: ["1host"] when this host finds ``pattern``, else ["0host"]."""
    for _ in partition:
        pass
    return [f"{int(bool(glob.glob(pattern)))}{_host()}"]


def _make(folder: str, token: str) -> str | None:
    """Make ``folder`` unless it is there (with a mark that the check made it, for ``_tidy``): None, or the
    reason it cannot be made."""
    made = not os.path.exists(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        if made:
            Path(folder, f"{PROBE}-{token}-made").touch()
    except OSError as e:
        return e.strerror
    return None


def _write_probe(folder: str, token: str, make: bool, index: int, partition) -> list[str]:
    """Task body: write probe ``index`` in ``folder``, first made by ``_make`` when ``make``: [its name], or
    ["?why the folder cannot be made"], or ["!host: why it cannot be written"]."""
    for _ in partition:
        pass
    if make and (error := _make(folder, token)):
        return [f"?{error}"]
    name = f"{PROBE}-{token}-{index}"
    try:
        Path(folder, name).write_text(_host())
    except OSError as e:
        return [f"!{_host()}: {e.strerror}"]
    return [name]


def _tidy(folder: str, token: str, failed: bool, index: int = 0, partition=()) -> list[str]:
    """Remove the probe files of ``token`` that this host sees in ``folder``, and the folder itself when the check
    failed and made it: nothing of a failed save or staging is left."""
    for _ in partition:
        pass
    if failed and os.path.exists(os.path.join(folder, f"{PROBE}-{token}-made")):
        shutil.rmtree(folder, ignore_errors=True)
    for name in glob.glob(os.path.join(glob.escape(folder), f"{PROBE}-{token}-*")):
        Path(name).unlink(missing_ok=True)
    return []


def _escaped(path: str) -> str:
    """``path`` with Hadoop's glob characters escaped."""
    return "".join("\\" + c if c in "\\*?[]{}" else c for c in path)


def check_readable(spark, path: str, what: str) -> None:
    """DataError naming ``path`` when some executor does not find it (a driver-local path on a cluster)."""
    local = local_path(path)
    if local is None or not _on_cluster(spark):
        return
    _describe(spark, f"check that the executors see {path}")
    seen = _on_executors(spark, partial(_sees, local))
    missing = sorted({s[1:] for s in seen if s[0] == "0"})
    if missing:
        raise DataError(f"{what} {path}: the executors cannot read it (not on {', '.join(missing)}); {HINT}")


def check_writable_together(spark, folder: str, what: str) -> None:
    """DataError naming ``folder`` unless what the executors write there is seen by the driver (one folder for
    all, not one per host): each probe task writes a small file, the driver lists them. The driver makes the
    folder first when it is missing; on Spark Connect, where this process is not the driver, the tasks make it
    and, afterwards, remove their files (and the folder, if they made it and the check failed) as the driver
    does on a classic session."""
    local = local_path(folder)
    if local is None or not _on_cluster(spark):
        return
    token, connect = uuid.uuid4().hex[:8], is_connect(spark)
    if not connect and (error := _make(local, token)):
        raise DataError(f"{what} {folder}: cannot create it ({error})")
    _describe(spark, f"check that the executors write {folder} together")
    names = _on_executors(spark, partial(_write_probe, local, token, connect))
    failed = True
    try:
        for n in names:
            if n.startswith("?"):
                raise DataError(f"{what} {folder}: cannot create it ({n[1:]})")
        for n in names:
            if n.startswith("!"):
                raise DataError(f"{what} {folder}: the executors cannot write there ({n[1:]}); {HINT}")
        if os.path.isabs(local) or not connect:  # this process is the driver: its working folder, if relative
            listed = f"file://{_escaped(os.path.abspath(local))}/{PROBE}-{token}-*"
        else:  # relative to Spark's driver's working folder, as Spark resolves the path it saves to
            listed = f"{_escaped(local)}/{PROBE}-{token}-*"
        seen = {p.rsplit("/", 1)[-1] for p in hadoop_files(spark, listed)}
        if not seen.issuperset(names):
            raise DataError(f"{what} {folder}: what the executors write there does not reach the driver (each host "
                            f"has its own {local}); {HINT}")
        failed = False
    finally:
        if not connect:  # this process is the driver
            _tidy(local, token, failed)
        else:
            try:  # wherever the tasks land: best effort
                _on_executors(spark, partial(_tidy, local, token, failed))
            except Exception as e:  # the check's own error, if any, is the one to see
                log.warning("could not remove the probe files in %s: %s", folder, str(e).splitlines()[0])


def _try_store(url: str, token: str, index: int, partition) -> list[str]:
    """Task body: write and delete one small object under ``url``; [""] or ["TYPE: first line of the error"]."""
    for _ in partition:
        pass
    from mnist_lenet_spark.executor import shards
    try:
        probe = f"{url.rstrip('/')}/.{PROBE}-{token}"
        shards.write_file(probe, b"probe")
        shards.remove_url(probe)
    except Exception as e:  # whatever the store's library raises: reported, not crashed on
        return [f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}"]
    return [""]


def check_store_writable(spark, url: str, what: str) -> None:
    """DataError naming ``url`` unless fsspec has a filesystem for its scheme and an executor can write and delete
    an object there (the store's library in the executors' environment, its endpoint and credentials set for
    them, e.g. with ``spark.executorEnv.AWS_ENDPOINT_URL_S3``)."""
    import fsspec
    scheme = urlparse(url).scheme
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as e:
        raise DataError(f"{what} {url}: no filesystem for {scheme}:// here ({str(e).splitlines()[0]})") from None
    _describe(spark, f"check that the executors write {url}")
    token = uuid.uuid4().hex[:8]
    error = _on_executors(spark, partial(_try_store, url, token), tasks=1)[0]
    if error:
        raise DataError(f"{what} {url}: the executors cannot write there ({error})")

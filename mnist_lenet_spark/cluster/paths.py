"""Whether the executors see a path as the driver does: on a cluster a plain (``file:``) path names a different
folder on every host, so a path that only the driver has is bad input, found before any work is done.
Paths with a scheme (``hdfs://``, ``s3a://``, ...) name one store for everyone; where our own Python writes to
one (a staging URL, through fsspec), an executor tries it first (``check_store_writable``)."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

from mnist_lenet_spark.data import DataError

HINT = "on a cluster use a path every host reads (hdfs://, s3a://, gs://, or a folder every host mounts)"


def local_path(path: str) -> str | None:
    """The local filesystem path of a plain or ``file:`` path; None for any other scheme."""
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return parsed.path
    return path if parsed.scheme == "" else None


def _on_cluster(sc) -> bool:
    # local[N] and local-cluster[...] run every executor on the driver's machine and filesystem
    return not sc.master.startswith("local")


def _probes(sc) -> int:
    return max(2 * sc.defaultParallelism, 2)  # enough tasks to reach every executor


def _host() -> str:
    return os.environ.get("SPARK_LOCAL_IP") or socket.gethostname()


def _sees(pattern: str, partition) -> list[tuple[str, bool]]:
    for _ in partition:
        pass
    return [(_host(), bool(glob.glob(pattern)))]


def _write_probe(folder: str, token: str, index: int, partition) -> list[str]:
    for _ in partition:
        pass
    name = f".lenet-probe-{token}-{index}"
    try:
        Path(folder, name).write_text(_host())
    except OSError as e:
        return [f"!{_host()}: {e.strerror}"]
    return [name]


def check_readable(sc, path: str, what: str) -> None:
    """DataError naming ``path`` when some executor does not find it (a driver-local path on a cluster)."""
    local = local_path(path)
    if local is None or not _on_cluster(sc):
        return
    sc.setJobDescription(f"check that the executors see {path}")
    seen = sc.parallelize(range(_probes(sc)), _probes(sc)).mapPartitions(lambda it: _sees(local, it)).collect()
    missing = sorted({host for host, found in seen if not found})
    if missing:
        raise DataError(f"{what} {path}: the executors cannot read it (not on {', '.join(missing)}); {HINT}")


def check_writable_together(sc, folder: str, what: str) -> None:
    """DataError naming ``folder`` unless what the executors write there is seen by the driver (one folder for
    all, not one per host): each probe task writes a small file, the driver looks for every one."""
    local = local_path(folder)
    if local is None or not _on_cluster(sc):
        return
    created = not os.path.exists(local)
    try:
        os.makedirs(local, exist_ok=True)
    except OSError as e:
        raise DataError(f"{what} {folder}: cannot create it ({e.strerror})") from None
    token = uuid.uuid4().hex[:8]
    sc.setJobDescription(f"check that the executors write {folder} together")
    names = sc.parallelize(range(_probes(sc)), _probes(sc)).mapPartitionsWithIndex(
        lambda i, it: _write_probe(local, token, i, it)).collect()
    try:
        failed = [n[1:] for n in names if n.startswith("!")]
        if failed:
            raise DataError(f"{what} {folder}: the executors cannot write there ({failed[0]}); {HINT}")
        if not all(os.path.isfile(os.path.join(local, n)) for n in names):
            raise DataError(f"{what} {folder}: what the executors write there does not reach the driver (each host "
                            f"has its own {local}); {HINT}")
    except DataError:
        if created:  # nothing of a failed save or staging is left on the driver
            shutil.rmtree(local, ignore_errors=True)
        raise
    finally:
        for n in names:
            if not n.startswith("!"):
                Path(local, n).unlink(missing_ok=True)


def _try_store(url: str, token: str, partition) -> list[str]:
    """Task body: write and delete one small object under ``url``; [""] or ["TYPE: first line of the error"]."""
    for _ in partition:
        pass
    from mnist_lenet_spark.executor import shards
    try:
        probe = f"{url.rstrip('/')}/.lenet-probe-{token}"
        shards.write_file(probe, b"probe")
        shards.remove_url(probe)
    except Exception as e:  # whatever the store's library raises: reported, not crashed on
        return [f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}"]
    return [""]


def check_store_writable(sc, url: str, what: str) -> None:
    """DataError naming ``url`` unless fsspec has a filesystem for its scheme and an executor can write and delete
    an object there (the store's library in the executors' environment, its endpoint and credentials set for
    them, e.g. with ``spark.executorEnv.AWS_ENDPOINT_URL_S3``)."""
    import fsspec
    scheme = urlparse(url).scheme
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as e:
        raise DataError(f"{what} {url}: no filesystem for {scheme}:// here ({str(e).splitlines()[0]})") from None
    sc.setJobDescription(f"check that the executors write {url}")
    token = uuid.uuid4().hex[:8]
    error = sc.parallelize([0], 1).mapPartitions(lambda it: _try_store(url, token, it)).collect()[0]
    if error:
        raise DataError(f"{what} {url}: the executors cannot write there ({error})")

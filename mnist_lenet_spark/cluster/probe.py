"""Whether the executors' Python can run this package, asked with one small task before any job that needs it.

Executors that cannot import the package (a notebook's session in a virtualenv without ``PYSPARK_PYTHON``, a
cluster without the wheel or the packed environment) would otherwise fail the first job with a worker's traceback.
``check_executors`` runs when a ``SyncSGD`` is made, once per SparkContext (a failed check is asked again, so a fix
on the live session, such as ``sc.addPyFile``, counts). The task body uses the standard library only and travels by
value, so it runs where the package does not.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time

import mnist_lenet_spark
from mnist_lenet_spark.cluster.one_job import is_connect
from mnist_lenet_spark.config import ConfigError

log = logging.getLogger(__name__)

PACKAGE = "mnist_lenet_spark"
#: what a training task needs besides the package (requirements-executor.txt; fsspec only for a staging URL):
#: found and versioned from their installed metadata, not imported, which would cost ~0.6 s
DEPENDENCIES = ("numpy", "scipy", "threadpoolctl", "pandas", "pyarrow")
DOCS = "docs/clusters.md"

_lock = threading.Lock()
_reports: dict[str, dict] = {}  # SparkContext (application id @ start time) -> the report of its executors


def _task(package: str, dependencies: tuple[str, ...]):
    """The probe's task body: a closure, so that cloudpickle sends its code rather than a reference to this
    module, which an executor without the package could not import."""

    def probe(partition):
        import importlib
        import importlib.util
        import socket
        import sys
        for _ in partition:
            pass
        report = {"host": socket.gethostname(), "python": sys.executable,
                  "python_version": "%d.%d.%d" % sys.version_info[:3], "versions": {}, "missing": {}}
        try:
            report["versions"][package] = getattr(importlib.import_module(package), "__version__", "unknown")
        except Exception as e:  # ModuleNotFoundError, or a broken copy: reported, not raised
            report["missing"][package] = f"{type(e).__name__}: {e}"
        for name in dependencies:
            try:
                found = importlib.util.find_spec(name) is not None
            except Exception:  # a package whose parent cannot be imported
                found = False
            if not found:
                report["missing"][name] = f"No module named {name!r}"
                continue
            from importlib import metadata
            try:
                report["versions"][name] = metadata.version(name)
            except metadata.PackageNotFoundError:  # importable without installed metadata (a zip on the path)
                report["versions"][name] = "unknown"
        return [report]

    return probe


def _ask(sc) -> dict:
    """The probe's report, from one RDD task."""
    description = sc.getLocalProperty("spark.job.description")
    sc.setJobDescription(f"check that the executors can import {PACKAGE}")
    try:
        [report] = sc.parallelize([0], 1).mapPartitions(_task(PACKAGE, DEPENDENCIES)).collect()
    finally:
        sc.setJobDescription(description)
    return report


def _ask_frame(spark) -> dict:
    """The probe's report, from one ``mapInArrow`` task (a Spark Connect session: its executors need pyarrow)."""
    probe = _task(PACKAGE, DEPENDENCIES)

    def task(batches):
        import json
        import pyarrow
        [report] = probe(batches)
        yield pyarrow.RecordBatch.from_pylist([{"report": json.dumps(report)}])
    return json.loads(spark.range(1, numPartitions=1).mapInArrow(task, "report string").collect()[0][0])


def _failure(e: BaseException) -> str:
    """The error of the probe's failed task: the worker's own Python error, else the JVM's reason for the task's
    loss (``Cannot run program ...``), else the first line."""
    from mnist_lenet_spark.cluster.task_errors import task_error
    own, text = task_error(e), str(e)
    lost = re.search(r"most recent failure: Lost task .*?\): (.+)", text)
    if own == text.strip().splitlines()[0].strip() and lost:
        return lost.group(1).strip()
    return own


def fixes(missing: list[str], master: str, connect: bool = False) -> str:
    """How to give the executors what they lack, for a session on ``master`` (a Spark Connect client's: ``connect``)."""
    if connect:  # the server chose the executors' Python; a session's Python workers run in a folder of its own
        return (f"install the wheel (make wheel) and requirements-executor.txt on every host, or start the Spark "
                f"Connect server with PYSPARK_PYTHON (or spark.pyspark.python) naming a Python that has them on "
                f"every host; spark.archives does not reach a Connect session's Python workers; see {DOCS}")
    if master.startswith("local"):  # local, local[N] and local-cluster[...]: executors on the driver's host
        return (f"start the session with PYSPARK_PYTHON set to an interpreter that has the package and its "
                f"dependencies, such as this driver's {sys.executable} (mnist_lenet_spark.session.session() sets "
                f"it so on a local master)")
    packed = ("ship the packed environment (make pack, then spark.archives=dist/mnist_lenet_spark_env.tar.gz"
              "#environment and PYSPARK_PYTHON=./environment/bin/python, or spark.pyspark.python under spark-submit "
              "or session()), or install the wheel (make wheel) and requirements-executor.txt on every host")
    if missing == [PACKAGE]:
        return (f"ship the package: sc.addPyFile('dist/mnist_lenet_spark.zip') (make dist) or spark-submit "
                f"--py-files of it (mnist_lenet_spark.session.session() ships it by itself), or {packed}; see {DOCS}")
    return f"{packed}; see {DOCS}"


def check_executors(spark) -> dict:
    """Run the probe task on one executor, once per SparkContext (``spark``: a SparkSession or SparkContext), and return
    its report: ``host``, ``python`` (the executors' interpreter), ``python_version``, ``versions`` (the package and
    each of ``DEPENDENCIES``), ``seconds`` (the probe job, as the driver waited for it). ConfigError, one line naming
    what is missing, the executors' interpreter and the fixes, when the executors lack the package or a dependency, or
    cannot run a Python task at all."""
    connect = is_connect(spark)  # no SparkContext: a DataFrame job asks
    sc = None if connect else getattr(spark, "sparkContext", spark)
    key = f"connect:{spark.session_id}" if connect else f"{sc.applicationId}@{sc.startTime}"
    with _lock:
        if key in _reports:
            return _reports[key]
    master = spark.conf.get("spark.master", "") if connect else sc.master
    start = time.perf_counter()
    try:
        report = _ask_frame(spark) if connect else _ask(sc)
    except Exception as e:  # the worker could not start or run: a wrong interpreter path, another Python version
        python = (f"the Spark Connect server's Python (spark.pyspark.python "
                  f"{spark.conf.get('spark.pyspark.python', 'unset')}, else its PYSPARK_PYTHON)" if connect
                  else f"PYSPARK_PYTHON={sc.pythonExec}")
        raise ConfigError(f"the executors cannot run a Python task with {python} "
                          f"({_failure(e)}): {fixes([PACKAGE, *DEPENDENCIES], master, connect)}") from None
    report["seconds"] = time.perf_counter() - start
    where = f"{report['python']} (Python {report['python_version']}) on {report['host']}"
    if report["missing"]:
        missing = list(report["missing"])
        raise ConfigError(f"the executors cannot import {', '.join(missing)} ({report['missing'][missing[0]]}) "
                          f"with their Python, {where}: {fixes(missing, master, connect)}")
    ours = report["versions"][PACKAGE]
    if ours != mnist_lenet_spark.__version__:
        log.warning("the executors run %s %s, the driver %s (their Python: %s): tasks run the executors' copy; give "
                    "them the driver's version (see %s)", PACKAGE, ours, mnist_lenet_spark.__version__, where, DOCS)
    log.info("executors checked in %.0f ms: %s; %s", 1e3 * report["seconds"], where,
             ", ".join(f"{name} {version}" for name, version in report["versions"].items()))
    with _lock:
        _reports[key] = report
    return report

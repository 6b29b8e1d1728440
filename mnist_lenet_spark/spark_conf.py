"""Any SparkSession: check the live session against the Spark settings training relies on.

``session.session()`` starts Spark with conf/spark-defaults.conf (and, on a cluster master, ``CLUSTER_DEFAULTS``). A
session made elsewhere (a notebook's, Databricks', ``getOrCreate()`` handing back an older one) may lack them.
``check`` runs when a ``SyncSGD`` is made and logs ONE warning per SparkContext naming each setting lacking and its
cost. No core setting can be applied to a running session: Spark reads them when the SparkContext or an executor
starts, ``spark.conf.set`` refuses them (CANNOT_MODIFY_CONFIG), and no job's local properties carry them. The file's
one SQL setting, ``spark.sql.execution.arrow.pythonUDF.columnarInput.enabled``, is runtime-modifiable; fitting runs
no Arrow UDF, and ``transform``, which does, sets it itself when its input needs it, so it is not checked here.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Callable

from mnist_lenet_spark import session as sessions

log = logging.getLogger(__name__)

_LOCAL, _CLUSTER, _ANY = "local", "cluster", "any"


@dataclass(frozen=True)
class Need:
    """How to compare a session's value of one setting with the wanted one, Spark's default when it is unset,
    where it matters (local masters, cluster masters, any) and what lacking it costs."""
    compare: str  # "equal", "at least" (sizes, counts), "at most", "has" (java options)
    default: str | Callable[[dict], str]  # Spark's, when the setting is unset
    cost: str
    where: str = _ANY


_EXCLUDE_COST = ("a staged step task that ran away from the executor holding its shard may be retried on that "
                 "same executor and fail again, up to spark.task.maxFailures times (the job fails)")

#: every setting of conf/spark-defaults.conf and session.CLUSTER_DEFAULTS (tests/test_any_session.py checks)
NEEDS: dict[str, Need] = {
    "spark.shuffle.reduceLocality.enabled": Need(
        "equal", "true", "staging a DataFrame puts every shard on the executor that holds most of the input "
        "(often all of them on one), which then computes every step alone", _CLUSTER),
    "spark.task.maxDirectResultSize": Need(
        "at least", "1m", "every gradient larger than the limit (LeNet's is 6.6 MB) comes back through the block "
        "manager: one more fetch per task per step"),
    "spark.python.worker.reuse": Need(
        "equal", "true", "each task starts a new Python worker: imports, BLAS set-up and the broadcast training "
        "set are redone every step"),
    "spark.python.task.killTimeout": Need(
        "at most", "2s", "with backup workers, a cancelled backup task's Python worker keeps its core for up to "
        "that long after its step has moved on"),
    "spark.python.unix.domain.socket.enabled": Need(
        "equal", "false", "the JVM talks to its Python workers over TCP: ~40 ms more per step"),
    "spark.ui.showConsoleProgress": Need(
        "equal", "false", "Spark's console progress bar interleaves with the training's own progress output"),
    "spark.driver.memory": Need(
        "at least", "1g", "a smaller heap for the driver, which in local mode is also the executor holding the "
        "broadcast training set and every task's result", _LOCAL),
    "spark.driver.extraJavaOptions": Need(
        "has", "", "the driver JVM's C2 compiler takes cores from the Python workers during the first ~40 steps",
        _LOCAL),
    "spark.sql.execution.arrow.pythonUDF.columnarInput.enabled": None,  # runtime SQL conf: transform sets it
    "spark.ui.retainedJobs": Need(
        "at most", "1000", "the driver keeps that many finished jobs (one a step) with their tasks: its memory "
        "grows further on long runs (docs/driver-memory.md)"),
    "spark.ui.retainedStages": Need(
        "at most", "1000", "the driver keeps that many finished stages (one a step) with their tasks: its memory "
        "grows further on long runs (docs/driver-memory.md)"),
    "spark.excludeOnFailure.taskAndStage.enabled": Need(
        "equal", lambda conf: conf.get("spark.excludeOnFailure.enabled", "false"), _EXCLUDE_COST, _CLUSTER),
    "spark.excludeOnFailure.task.maxTaskAttemptsPerExecutor": Need("at most", "1", _EXCLUDE_COST, _CLUSTER),
    "spark.excludeOnFailure.task.maxTaskAttemptsPerNode": Need(
        "at least", "2", "a shard's retries exclude its node after 2 misses", _CLUSTER),
    "spark.excludeOnFailure.stage.maxFailedTasksPerExecutor": Need(
        "at least", "2", "two missed tasks exclude the executor holding other shards from the step's stage", _CLUSTER),
    "spark.excludeOnFailure.stage.maxFailedExecutorsPerNode": Need(
        "at least", "2", "two excluded executors exclude their whole node from the step's stage", _CLUSTER),
}

_lock = threading.Lock()
_checked: set[str] = set()  # the SparkContexts (application id @ start time) already checked


def wanted() -> dict[str, str]:
    """The settings a session should have: conf/spark-defaults.conf (the checkout's or the wheel's copy) and
    ``session.CLUSTER_DEFAULTS``."""
    conf = dict(sessions.CLUSTER_DEFAULTS)
    if sessions.SPARK_DEFAULTS.is_file():
        conf.update(sessions.read_spark_conf(sessions.SPARK_DEFAULTS))
    return conf


def lacking(conf: dict[str, str], master: str) -> list[tuple[str, str, str]]:
    """(setting, its value here, the wanted value) for each wanted setting that ``conf`` (a SparkContext's
    settings, as ``getConf().getAll()`` gives them) lacks and that matters on ``master``."""
    local = master == "local" or master.startswith("local[")
    found = []
    for key, want in wanted().items():
        need = NEEDS.get(key)
        if need is None or (need.where == _LOCAL and not local) or (need.where == _CLUSTER and local):
            continue
        default = need.default(conf) if callable(need.default) else need.default
        value = conf.get(key, default)
        if not _meets(key, need.compare, value, want):
            found.append((key, value if key in conf else f"unset (Spark's default: {value or 'none'})", want))
    return found


def _meets(key: str, compare: str, value: str, want: str) -> bool:
    if compare == "equal":
        return value.strip().lower() == want.strip().lower()
    if compare == "has":
        return set(want.split()) <= set(value.split())
    try:
        a, b = _number(key, value), _number(key, want)
    except (AttributeError, KeyError, ValueError):  # a form we do not parse: Spark checks it, we name nothing
        return True
    return a >= b if compare == "at least" else a <= b


_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "kb": 2 ** 10, "m": 2 ** 20, "mb": 2 ** 20, "g": 2 ** 30, "gb": 2 ** 30,
          "t": 2 ** 40, "tb": 2 ** 40, "us": 1e-3, "ms": 1, "s": 1e3, "min": 6e4, "h": 3.6e6, "d": 8.64e7}


def _number(key: str, text: str) -> float:
    """A size in bytes, a time in ms or a count, in Spark's units (a bare number: MiB of driver memory, ms of the
    kill timeout, bytes of a result size)."""
    number, unit = re.fullmatch(r"([0-9.]+)\s*([a-z]*)", text.strip().lower()).groups()
    if key == "spark.driver.memory" and not unit:
        unit = "m"
    if key == "spark.python.task.killTimeout":
        unit = {"": "ms", "m": "min"}.get(unit, unit)
    return float(number) * _UNITS[unit]


def check(spark) -> list[str]:
    """Log one warning naming each setting the live session (a SparkSession or SparkContext) lacks and what that
    costs, once per SparkContext (a later call on it checks nothing). Returns the settings it named. Never raises:
    a check that cannot read the session only logs why at debug level."""
    sc = getattr(spark, "sparkContext", spark)
    try:
        with _lock:
            context = f"{sc.applicationId}@{sc.startTime}"
            if context in _checked:
                return []
            new = lacking(dict(sc.getConf().getAll()), sc.master)
            _checked.add(context)
    except Exception as e:  # the check must never stop a fit
        log.debug("could not check the session's Spark settings: %s", e)
        return []
    if new:
        lines = [f"  {key} is {value}, wanted {want}: {NEEDS[key].cost}" for key, value, want in new]
        log.warning(
            "This SparkSession lacks Spark settings the training relies on; Spark reads them when the session "
            "starts, so they cannot be applied now. Training goes on without them. Start the session with "
            "them: mnist_lenet_spark.session.session(), or spark-submit --properties-file %s (or your "
            "platform's cluster Spark config):\n%s", sessions.SPARK_DEFAULTS, "\n".join(lines))
    return [key for key, _, _ in new]

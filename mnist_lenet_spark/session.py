"""Starting Spark for this package: a session with conf/spark-defaults.conf applied, and the package zip
that executors on a cluster import."""
from __future__ import annotations

import io
import logging
import os
import sys
import zipfile
from pathlib import Path

from . import files
from .config import ConfigError

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
#: the Spark settings the step needs to be cheap, each explained in the README ("Spark settings")
SPARK_DEFAULTS = files.resource("conf", "spark-defaults.conf")
LOG4J = files.resource("conf", "log4j2.properties")  # warnings and errors only
#: Set on a cluster only (a user's own value wins). A staged step task that runs away from the executor holding its
#: shard (busy past spark.locality.wait) fails with ShardMissing, and by default Spark may retry it on that same
#: executor, up to spark.task.maxFailures times (seen: 2 in a row). Task-level exclusion sends a retry elsewhere; the
#: stage and node limits are raised so that misses never exclude the executor holding other shards. Not in local
#: mode: its one executor would be excluded and a retry could run nowhere (Spark aborts after 120 s).
CLUSTER_DEFAULTS = {
    "spark.excludeOnFailure.taskAndStage.enabled": "true",
    "spark.excludeOnFailure.task.maxTaskAttemptsPerExecutor": "1",
    "spark.excludeOnFailure.task.maxTaskAttemptsPerNode": "1000",
    "spark.excludeOnFailure.stage.maxFailedTasksPerExecutor": "1000",
    "spark.excludeOnFailure.stage.maxFailedExecutorsPerNode": "1000",
}


def read_spark_conf(path: str | os.PathLike) -> dict[str, str]:
    """``key value`` lines of a spark-defaults.conf (comments and blank lines skipped)."""
    conf = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read Spark conf file ({e.strerror})") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ConfigError(f"{path}:{number}: expected 'key value', got {line!r}")
        conf[parts[0]] = parts[1].strip()
    return conf


def session(master: str | None = None, app_name: str = "mnist_lenet_spark", conf: dict | None = None,
            conf_file: str | os.PathLike | None = None):
    """A SparkSession with the settings of ``conf_file`` (default: conf/spark-defaults.conf, the checkout's or the
    installed wheel's copy), then ``conf`` on top; Spark logs through conf/log4j2.properties (warnings and errors)."""
    from pyspark.sql import SparkSession
    if conf_file is None and SPARK_DEFAULTS.is_file():
        conf_file = SPARK_DEFAULTS
    elif conf_file is None:  # neither a wheel's copy nor a checkout (a package zip away from its checkout)
        log.warning("%s not found: the session starts with Spark's default settings (training applies or names "
                    "the ones it needs: spark_conf.check)", SPARK_DEFAULTS)
    settings = read_spark_conf(conf_file) if conf_file else {}
    settings.update(conf or {})
    resolved = _master_of(master, settings)
    if resolved != "local" and not resolved.startswith("local["):  # local-cluster has executors of its own
        settings = {**CLUSTER_DEFAULTS, **settings}
    java_options = settings.get("spark.driver.extraJavaOptions", "")
    if LOG4J.is_file() and "log4j2.configurationFile" not in java_options:
        settings["spark.driver.extraJavaOptions"] = f"{java_options} -Dlog4j2.configurationFile={LOG4J}".strip()
    _set_executor_python(resolved, settings)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    spark = builder.config(map=settings).getOrCreate()
    if not spark.sparkContext.master.startswith("local"):
        ship_package(spark.sparkContext)
    return spark


def local_connect(master: str = "local[2]", conf: dict[str, str] | None = None):
    """(server, client): a Spark Connect server in this process on ``master`` (a ``session()`` with Spark's Connect
    plugin, as ``SparkSession.builder.remote(master)`` starts one) on a free port rather than 15002, which another
    user's server may hold, and a Spark Connect client of it; they share a token. For tests, benchmarks and notebooks
    on one machine; the client's ``stop()`` stops the server too."""
    import socket
    import uuid
    from pyspark.sql.connect.session import SparkSession as ConnectSession
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.setdefault("SPARK_CONNECT_AUTHENTICATE_TOKEN", str(uuid.uuid4()))  # the server's and the client's
    os.environ["SPARK_LOCAL_REMOTE"] = "1"  # as pyspark's own local server: the client's stop() stops it
    server = session(master, conf={**(conf or {}), "spark.plugins": "org.apache.spark.sql.connect.SparkConnectPlugin",
                                   "spark.connect.grpc.binding.port": str(port),
                                   "spark.sql.artifact.isolation.enabled": "true",
                                   "spark.sql.artifact.isolation.alwaysApplyClassloader": "true"})
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"  # pyspark.sql.functions then build Connect columns
    # "localhost": the client then sends the token without TLS, as to pyspark's own local server
    return server, ConnectSession.builder.remote(f"sc://localhost:{port}").getOrCreate()


_defaulted: str | None = None  # the PYSPARK_PYTHON that session() chose by itself (a local master's), if any


def executor_python(master: str, settings: dict[str, str], chosen: str | None) -> str | None:
    """The interpreter the Python workers of a session on ``master`` run (its PYSPARK_PYTHON): the settings'
    ``spark.pyspark.python`` (as with spark-submit, it wins; PySpark itself reads only the variable in a process that
    spark-submit did not start), else the user's PYSPARK_PYTHON ``chosen``, else, on a local master (local, local[N],
    local-cluster: executors on this host), this interpreter. None on a cluster master where the user chose none:
    PySpark's default, ``python3`` on the executors' PATH; the driver's interpreter path means nothing elsewhere."""
    return settings.get("spark.pyspark.python") or chosen or (sys.executable if master.startswith("local") else None)


def _set_executor_python(master: str, settings: dict[str, str]) -> None:
    """Set (or, on a cluster master, clear a local session's default) PYSPARK_PYTHON before the SparkContext
    starts, which reads it once."""
    global _defaulted
    chosen = os.environ.get("PYSPARK_PYTHON")
    if chosen is not None and chosen == _defaulted:
        chosen = None  # set by an earlier local session(), not by the user
    python = executor_python(master, settings, chosen)
    if python is None:
        os.environ.pop("PYSPARK_PYTHON", None)
        log.info("the executors run python3 from their PATH (PySpark's default): set spark.pyspark.python or "
                 "PYSPARK_PYTHON to choose another, such as a packed environment's ./environment/bin/python")
    else:
        os.environ["PYSPARK_PYTHON"] = python
    _defaulted = python if not chosen and not settings.get("spark.pyspark.python") else None


def _master_of(master: str | None, settings: dict[str, str]) -> str:
    """The master the session will have: the argument, the settings, or spark-submit's --master."""
    if master or "spark.master" in settings:
        return master or settings["spark.master"]
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # no spark-submit: pyspark launches a local JVM
        return "local[*]"
    from pyspark import SparkConf, SparkContext
    SparkContext._ensure_initialized()  # connects to spark-submit's JVM, whose settings hold its --master
    return SparkConf().get("spark.master", "local[*]")


def ship_package(sc) -> str | None:
    """Zip this package and ``addPyFile`` it, so executors on a cluster can import it; not when it was imported
    from a zip (``--py-files``: spark-submit ships that one, and a second file of that name is refused)."""
    if files.imported_from_zip():
        return None
    # in the SparkContext's own temp folder, which Spark deletes when the session stops
    out = build_zip(Path(sc._temp_dir) / "mnist_lenet_spark.zip")
    sc.addPyFile(str(out))
    return str(out)


def build_zip(path: str | os.PathLike) -> Path:
    """The package as a zip importable from ``--py-files`` (written atomically)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(PACKAGE_DIR.rglob("*.py")):
            z.write(f, Path("mnist_lenet_spark") / f.relative_to(PACKAGE_DIR))
    return files.write_atomically(path, buffer.getvalue())

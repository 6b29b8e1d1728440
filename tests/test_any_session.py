"""Any SparkSession works (spark_conf.check): a session made without conf/spark-defaults.conf trains, and one
warning per SparkContext names each setting it lacks and what that costs; a session made by session() gets none.
The plain session runs in a fresh process (one SparkContext per process: the other tests share theirs)."""
import json
import logging
import subprocess
import sys

from mnist_lenet_spark import session, spark_conf
from tests.conftest import ROOT


def test_every_setting_of_the_conf_file_says_what_lacking_it_costs():
    for key in {**session.read_spark_conf(ROOT / "conf" / "spark-defaults.conf"), **session.CLUSTER_DEFAULTS}:
        assert key in spark_conf.NEEDS, f"{key}: add it to spark_conf.NEEDS (how to compare it, what it costs)"


def test_what_session_sets_lacks_nothing_on_any_master():
    local = session.read_spark_conf(session.SPARK_DEFAULTS)
    assert spark_conf.lacking(local, "local[2]") == []
    assert spark_conf.lacking({**session.CLUSTER_DEFAULTS, **local}, "spark://host:7077") == []
    # better values than the file's are fine: more result size and memory, fewer retained jobs
    assert spark_conf.lacking({**local, "spark.task.maxDirectResultSize": "128m", "spark.driver.memory": "4096",
                               "spark.ui.retainedJobs": "50", "spark.driver.extraJavaOptions":
                               "-Dx=1 -XX:TieredStopAtLevel=1"}, "local[*]") == []


def test_what_matters_depends_on_the_master():
    assert {key for key, _, _ in spark_conf.lacking({}, "local[2]")} == {
        "spark.python.unix.domain.socket.enabled", "spark.task.maxDirectResultSize", "spark.driver.memory",
        "spark.driver.extraJavaOptions", "spark.ui.retainedJobs", "spark.ui.retainedStages",
        "spark.python.task.killTimeout"}
    cluster = {key for key, _, _ in spark_conf.lacking({}, "yarn")}
    assert {"spark.shuffle.reduceLocality.enabled", "spark.python.task.killTimeout",
            "spark.excludeOnFailure.taskAndStage.enabled"} <= cluster
    assert "spark.driver.memory" not in cluster  # a cluster's driver memory is the platform's business
    assert spark_conf.lacking({"spark.task.maxDirectResultSize": "lots"}, "local[2]") == spark_conf.lacking(
        {"spark.task.maxDirectResultSize": "64m"}, "local[2]")  # a value we cannot parse is not named
    assert ("spark.python.task.killTimeout", "5000", "0s") in spark_conf.lacking(
        {"spark.python.task.killTimeout": "5000"}, "local[2]")


class FakeContext:
    master, startTime = "local-cluster[2,1,1024]", 1

    def __init__(self, app, conf):
        self.applicationId, self._conf = app, conf

    def getConf(self):
        conf = self._conf

        class Conf:
            def getAll(self):
                return list(conf.items())
        return Conf()


def test_one_warning_per_context(caplog):
    sc = FakeContext("app-fake-1", {"spark.ui.retainedJobs": "1000"})
    with caplog.at_level(logging.WARNING, logger="mnist_lenet_spark.spark_conf"):
        first = spark_conf.check(sc)
        again = spark_conf.check(sc)
        other = spark_conf.check(FakeContext("app-fake-2", {}))  # another SparkContext: checked too
    assert {"spark.shuffle.reduceLocality.enabled", "spark.python.task.killTimeout"} <= set(first)
    assert again == [] and "spark.ui.retainedJobs" in other
    records = [r for r in caplog.records if r.name == "mnist_lenet_spark.spark_conf"]
    assert len(records) == 2 and all(r.levelno == logging.WARNING for r in records)
    text = records[0].getMessage()
    assert "spark.ui.retainedJobs is 1000, wanted 200: the driver keeps that many finished jobs" in text
    assert "spark.shuffle.reduceLocality.enabled is unset (Spark's default: true), wanted false: staging" in text
    assert "--properties-file" in text
    assert spark_conf.check(object()) == []  # not a session: no check, no error


PLAIN_SESSION = r"""
import json, logging, sys
import numpy as np
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger("mnist_lenet_spark.spark_conf").addHandler(Keep())

from pyspark.sql import SparkSession
from mnist_lenet_spark import session
from mnist_lenet_spark.ml import NetworkClassifier

def rows(spark):
    rng = np.random.default_rng(0)
    data = [(int(rng.integers(10)), rng.integers(0, 256, 784, dtype=np.uint8).tobytes()) for _ in range(96)]
    return spark.createDataFrame(spark.sparkContext.parallelize(data, 2), "label long, features binary")

def fit(spark):
    model = NetworkClassifier(workers=2, backupWorkers=1, batchSize=8, maxSteps=3, seed=1).fit(rows(spark))
    return len(model.summary.history)

out = {}
spark = SparkSession.builder.master("local[2]").getOrCreate()
out["plain_steps"] = fit(spark)
out["plain_warnings"] = list(warnings)
out["plain_again_steps"] = fit(spark)  # the same SparkContext: no second warning
out["plain_again_warnings"] = warnings[len(out["plain_warnings"]):]
spark.stop()
del warnings[:]
spark = session.session("local[2]")
out["session_steps"] = fit(spark)
out["session_warnings"] = list(warnings)
spark.stop()
print(json.dumps(out))
"""


def test_a_plain_session_trains_and_warns_once_a_session_from_session_does_not(tmp_path):
    proc = subprocess.run([sys.executable, "-c", PLAIN_SESSION], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["plain_steps"] == out["plain_again_steps"] == out["session_steps"] == 3
    [warning] = out["plain_warnings"]
    for key in ("spark.task.maxDirectResultSize", "spark.python.task.killTimeout", "spark.ui.retainedJobs",
                "spark.python.unix.domain.socket.enabled"):
        assert f"\n  {key} is unset (Spark's default: " in warning, key
    assert "every gradient larger than the limit (LeNet's is 6.6 MB) comes back through the block manager" in warning
    # local mode: one executor holds every shard anyway, so reduce locality costs nothing there and is not named
    assert "reduceLocality" not in warning
    assert out["plain_again_warnings"] == [] and out["session_warnings"] == []
    assert warning in proc.stderr  # logged, through logging

"""Executors that cannot import the package are found by one probe task before any training job (cluster/probe.py)
and named in one ConfigError line; session() points the executors at the driver's interpreter on a local master
only. The plain session with a bare interpreter runs in a fresh process (PYSPARK_PYTHON is read when its
SparkContext starts)."""
import json
import logging
import os
import subprocess
import sys

import pytest

import mnist_lenet_spark
from mnist_lenet_spark import session
from mnist_lenet_spark.cluster import probe
from mnist_lenet_spark.config import ConfigError
from tests.conftest import ROOT, own_tracebacks
from tests.test_clusters import standalone_cluster

BARE_SESSION = r"""
import json, sys
import numpy as np
from pyspark.sql import SparkSession
from mnist_lenet_spark import session
from mnist_lenet_spark.config import ConfigError
from mnist_lenet_spark.ml import NetworkClassifier
from mnist_lenet_spark.spark import SyncSGD

spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
out = {}
try:
    SyncSGD(spark, 2, batch_size=8, max_steps=2).fit(np.zeros((32, 1, 28, 28), np.uint8), np.zeros(32, np.int64))
except ConfigError as e:
    out["sync"] = str(e)
rows = spark.createDataFrame([(0, bytes(784))] * 16, "label long, features binary")
try:
    NetworkClassifier(workers=2, batchSize=8, maxSteps=2).fit(rows)
except ConfigError as e:
    out["estimator"] = str(e)
print(json.dumps(out), flush=True)
# the package shipped to the live session: asked again (not caught: the process ends with its one line)
spark.sparkContext.addPyFile(str(session.build_zip(sys.argv[1])))
SyncSGD(spark, 2)
"""


def test_executors_without_the_package_end_in_one_line_before_any_job(tmp_path):
    bare = tmp_path / "bare"  # the driver's Python version, none of its packages (PySpark comes from Spark)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    assert subprocess.run([python, "-c", "import numpy"], capture_output=True, cwd=tmp_path).returncode != 0
    env = {**os.environ, "PYSPARK_PYTHON": python}
    proc = subprocess.run([sys.executable, "-c", BARE_SESSION, str(tmp_path / "package.zip")], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env=env)  # not the checkout: no package on the path
    assert proc.returncode != 0
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["sync"] == out["estimator"]
    assert out["sync"].startswith("the executors cannot import mnist_lenet_spark, numpy, scipy, threadpoolctl, "
                                  "pandas, pyarrow (ModuleNotFoundError: No module named 'mnist_lenet_spark') with "
                                  f"their Python, {python} (Python 3."), out["sync"]
    assert f"PYSPARK_PYTHON set to an interpreter that has the package and its dependencies, such as this driver's " \
        f"{sys.executable}" in out["sync"]
    last = proc.stderr.strip().splitlines()[-1]  # the shipped package: now only its dependencies are missing
    assert last.startswith("mnist_lenet_spark.config.ConfigError: the executors cannot import numpy, scipy, "
                           "threadpoolctl, pandas, pyarrow (No module named 'numpy') with their Python"), last
    # no job failed: no worker traceback, no lost task, only the driver's own traceback of the uncaught error
    assert "ModuleNotFoundError: No module named 'mnist_lenet_spark'\n" not in proc.stderr
    assert "pyspark/worker.py" not in proc.stderr and "Lost task" not in proc.stderr
    assert len(own_tracebacks(proc.stderr)) == 1


def test_the_probe_reports_versions_once_per_context_and_warns_of_another_package_version(spark, monkeypatch,
                                                                                          caplog):
    sc = spark.sparkContext
    monkeypatch.setattr(probe, "_reports", {})
    report = probe.check_executors(spark)
    assert report["versions"][probe.PACKAGE] == mnist_lenet_spark.__version__
    assert set(report["versions"]) == {probe.PACKAGE, *probe.DEPENDENCIES} and report["missing"] == {}
    assert report["python"] == sys.executable and 0 < report["seconds"] < 60
    assert sc.getLocalProperty("spark.job.description") is None  # the probe's own description is not left behind

    real_task = probe._task

    def older(package, dependencies):
        real = real_task(package, dependencies)

        def task(partition):
            [found] = real(partition)
            found["versions"][package] = "0.0.1"
            return [found]
        return task

    monkeypatch.setattr(probe, "_task", older)
    assert probe.check_executors(sc) is report  # cached for this SparkContext: no second job
    monkeypatch.setattr(probe, "_reports", {})
    with caplog.at_level(logging.WARNING, logger="mnist_lenet_spark.cluster.probe"):
        assert probe.check_executors(sc)["versions"][probe.PACKAGE] == "0.0.1"
    [warning] = [r.getMessage() for r in caplog.records if r.name == "mnist_lenet_spark.cluster.probe"]
    assert warning.startswith(f"the executors run mnist_lenet_spark 0.0.1, the driver {mnist_lenet_spark.__version__} "
                              f"(their Python: {sys.executable}")


def test_executors_that_cannot_start_python_are_one_line(spark, monkeypatch, tmp_path):
    sc = spark.sparkContext
    monkeypatch.setattr(probe, "_reports", {})
    monkeypatch.setattr(sc, "pythonExec", str(tmp_path / "no-python"))  # read per job, as PYSPARK_PYTHON is at start
    with pytest.raises(ConfigError) as error:
        probe.check_executors(sc)
    message = str(error.value)
    assert message.startswith(f"the executors cannot run a Python task with PYSPARK_PYTHON={tmp_path / 'no-python'} "
                              f"(java.io.IOException: Cannot run program \"{tmp_path / 'no-python'}\": error=2")
    assert "\n" not in message and "such as this driver's" in message
    assert probe._reports == {}  # a failed check is asked again


def test_cluster_fixes_name_the_ways_the_package_reaches_executors():
    only_package = probe.fixes([probe.PACKAGE], "spark://host:7077")
    assert "sc.addPyFile('dist/mnist_lenet_spark.zip') (make dist)" in only_package
    assert "spark.archives=dist/mnist_lenet_spark_env.tar.gz#environment" in only_package
    dependencies = probe.fixes(["numpy"], "yarn")
    assert "addPyFile" not in dependencies and "make pack" in dependencies and "requirements-executor.txt" in \
        dependencies and "docs/clusters.md" in dependencies
    assert sys.executable in probe.fixes(["numpy"], "local-cluster[2,1,1024]")
    connect = probe.fixes([probe.PACKAGE], "spark://host:7077", connect=True)  # the server chose their Python
    assert "Spark Connect server with PYSPARK_PYTHON" in connect and "spark.archives does not reach" in connect
    assert (ROOT / "requirements-executor.txt").is_file() and (ROOT / "docs" / "clusters.md").is_file()
    make = (ROOT / "Makefile").read_text()
    assert all(f"\n{target}:" in make for target in ("pack", "dist", "wheel"))


def test_session_points_executors_at_this_interpreter_on_a_local_master_only(monkeypatch):
    assert session.executor_python("local[2]", {}, None) == sys.executable
    assert session.executor_python("local-cluster[2,1,1024]", {}, None) == sys.executable
    assert session.executor_python("spark://host:7077", {}, None) is None  # PySpark's default: python3 there
    assert session.executor_python("yarn", {}, "/opt/py/bin/python") == "/opt/py/bin/python"
    packed = {"spark.pyspark.python": "./environment/bin/python"}
    assert session.executor_python("spark://host:7077", packed, "/opt/py/bin/python") == "./environment/bin/python"
    # a notebook: a local session, then one on a cluster in the same process, with no PYSPARK_PYTHON of its own
    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    monkeypatch.setattr(session, "_defaulted", None)
    session._set_executor_python("local[2]", {})
    assert os.environ["PYSPARK_PYTHON"] == sys.executable
    session._set_executor_python("spark://host:7077", {})
    assert "PYSPARK_PYTHON" not in os.environ  # the local session's default is not the user's choice
    session._set_executor_python("spark://host:7077", packed)
    assert os.environ["PYSPARK_PYTHON"] == "./environment/bin/python"
    monkeypatch.setenv("PYSPARK_PYTHON", "/opt/py/bin/python")  # the user's own
    session._set_executor_python("spark://host:7077", {})
    assert os.environ["PYSPARK_PYTHON"] == "/opt/py/bin/python"


NOTEBOOK_FIT = r"""
import json
import numpy as np
from mnist_lenet_spark.cluster import probe
from mnist_lenet_spark.spark import SyncSGD

rng = np.random.default_rng(0)
images, labels = rng.integers(0, 256, (128, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, 128)
result = SyncSGD(spark, 2, batch_size=16, max_steps=3).fit(images, labels)
print(json.dumps({"steps": len(result.history), "executors": probe.check_executors(spark)}))
spark.stop()
"""


def notebook_cell() -> str:
    """The session cell of docs/clusters.md's Jupyter recipe."""
    text = (ROOT / "docs" / "clusters.md").read_text()
    section = text.split("### Jupyter against a standalone cluster", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def standalone(tmp_path):
    """A standalone master and one two-core worker on 127.0.0.1 whose executors get PySpark's default Python (one
    worker: each executor unpacks the 181 MB packed environment)."""
    with standalone_cluster(tmp_path, workers=1, cores=2, python=None) as (url, _):
        yield url


def test_the_notebook_recipe_trains_on_a_standalone_cluster_with_the_packed_environment(standalone, tmp_path):
    packed = ROOT / "dist" / "mnist_lenet_spark_env.tar.gz"
    assert packed.is_file(), f"{packed} is missing: make test builds it (make pack)"
    cell = notebook_cell()
    assert "spark://HOST:7077" in cell and "/path/to/mnist_lenet_spark/dist/" in cell
    cell = cell.replace("spark://HOST:7077", standalone).replace("/path/to/mnist_lenet_spark/", f"{ROOT}/")
    env = {k: v for k, v in os.environ.items() if k != "PYSPARK_PYTHON"}  # a notebook that sets none
    proc = subprocess.run([sys.executable, "-c", cell + NOTEBOOK_FIT], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["steps"] == 3
    assert out["executors"]["python"].endswith("environment/bin/python"), out["executors"]  # the archive's
    assert out["executors"]["versions"]["mnist_lenet_spark"] == mnist_lenet_spark.__version__


def test_the_wheel_task_entry_points_in_the_docs_are_the_packages_commands():
    import tomllib
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    text = (ROOT / "docs" / "clusters.md").read_text().split("### Databricks", 1)[1]
    jobs = {"train": "train_lenet", "predict": "predict", "experiment": "straggler_experiment"}
    for name, target in scripts.items():
        job = jobs[target.rsplit(":", 1)[1]]
        assert f"| `{name}` | `jobs/{job}.py` | `{target}` |" in text, name
        assert (ROOT / "jobs" / f"{job}.py").is_file()

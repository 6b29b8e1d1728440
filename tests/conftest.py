import importlib.util
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def mnist():
    from mnist_lenet_spark import data
    return data.load_mnist()


@pytest.fixture(scope="module")
def spark(request):
    """A session for one test module (local[2] unless the module sets SPARK_MASTER), stopped at its end."""
    from mnist_lenet_spark import spark as msp
    session = msp.session(getattr(request.module, "SPARK_MASTER", "local[2]"), conf={"spark.ui.enabled": "false"})
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def tiny_problem(n, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    from mnist_lenet_spark import models
    params = {k: v.astype(dtype) for k, v in models.network_from("lenet").init_params(seed).items()}
    X = rng.uniform(-1, 1, (n, 1, 28, 28)).astype(dtype)
    return params, X, rng.integers(0, 10, n)


def load_job(name):
    """A module of jobs/ (entry points, not a package), loaded from its file."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def own_tracebacks(stderr: str) -> list[str]:
    """The tracebacks in a job's stderr, less PySpark's daemon reporting a worker's closed pipe at shutdown
    (its known noise: ``daemon.py ... BrokenPipeError``, sometimes cut off by the exit after its first line, so
    with no frame at all, or after its first frame, so with no error line), which says nothing about our code."""
    def daemon_noise(block: str) -> bool:
        head = block.split("\n\n")[0]
        errors = re.findall(r"^(\w+(?:Error|Exception))\b", head, re.M)  # a cut-off one names none
        return "pyspark/daemon.py" in block and all(e == "BrokenPipeError" for e in errors)
    blocks = stderr.split("Traceback (most recent call last):")[1:]
    return [b for b in blocks if 'File "' in b.split("\n\n")[0] and not daemon_noise(b)]


@pytest.fixture(scope="module")
def connect_pair():
    """(server, client) of ``session.local_connect`` on local[4], for one test module: the server is a classic
    session in this process, the client a Spark Connect session of it; the client's stop stops both. The guard that
    Spark Connect tests run under is ``tests.test_connect.no_spark_context``."""
    from mnist_lenet_spark.cluster import one_job
    from mnist_lenet_spark.session import local_connect
    server, client = local_connect("local[4]", {"spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"})
    assert one_job.is_connect(client) and not one_job.is_connect(server)
    yield server, client
    client.stop()  # and the server

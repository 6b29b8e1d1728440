"""The same trainer on separate executor JVMs: local-cluster and a standalone master with two workers."""
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from mnist_lenet_spark import models
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.config import SGDConfig
from mnist_lenet_spark import local
from tests.conftest import tiny_problem
from tests.reference import rel_error

lenet = models.network_from("lenet")  # the preset, as a model object


def check_trainer(session, mnist):
    """Distributed gradient equals the single-process one; a short fit matches the local trainer."""
    session.sparkContext.setLogLevel("ERROR")
    params, X, y = tiny_problem(5, dtype=np.float64)
    _, grads = msp.SyncSGD(session, workers=2).gradient(params, X, y)
    _, grads0 = lenet.loss_and_grads(params, X, y, train=False, l2=SGDConfig.l2)
    assert max(rel_error(grads[k], grads0[k]) for k in grads) < 1e-10
    images, labels = mnist.train.images[:64], mnist.train.labels[:64]
    result = msp.SyncSGD(session, workers=2, batch_size=16, seed=2).fit(images, labels, max_steps=2)
    single = local.fit_local(images, labels, SGDConfig(batch_size=16, seed=2, max_steps=2), shards=2)
    assert rel_error(result.params["conv2.W"], single.params["conv2.W"]) < 1e-4


def test_local_cluster(mnist):
    session = msp.session("local-cluster[2,1,1024]", conf={"spark.ui.enabled": "false"})
    try:
        check_trainer(session, mnist)
    finally:
        session.stop()


def test_staged_tasks_that_run_away_from_their_shard_are_run_again_elsewhere(mnist, tmp_path):
    """Three shards on two executors, locality ignored (spark.locality.wait=0, as when tasks outlast the wait):
    tasks run where their shard is not and fail with ShardMissing; a retry never runs on the executor it missed
    on (session()'s cluster settings), and the fit equals the array fit of the same rows."""
    from mnist_lenet_spark.cluster import staging
    from tests.event_log import task_ends
    session = msp.session("local-cluster[2,1,1024]", conf={
        "spark.ui.enabled": "false", "spark.locality.wait": "0s", "spark.eventLog.enabled": "true",
        "spark.eventLog.compress": "false", "spark.eventLog.dir": str(tmp_path)})
    session.sparkContext.setLogLevel("ERROR")
    try:
        images, labels = mnist.train.images[:1200], mnist.train.labels[:1200]
        rows = [(int(y), bytearray(x.tobytes())) for x, y in zip(images, labels)]
        df = session.createDataFrame(session.sparkContext.parallelize(rows, 2), ["label", "features"])
        sgd = msp.SyncSGD(session, 3, batch_size=32)
        staged = staging.stage(df, "features", "label", 3, staging.staging_directory(None))
        try:
            on_shards = sgd.fit_data(staged.source, staged.num_examples, max_steps=25)
        finally:
            staging.unstage(session.sparkContext, staged.source)
        on_arrays = sgd.fit(images, labels, max_steps=25)
        app_id = session.sparkContext.applicationId
    finally:
        session.stop()
    assert all(np.array_equal(on_shards.params[k], on_arrays.params[k]) for k in on_arrays.params)
    missed = [end for end in task_ends(tmp_path, app_id) if end.shard_missing]
    assert missed, "no task ran away from its shard: the test did not exercise the retry"
    assert all(end.attempt == 0 for end in missed), f"a retry ran away again: {missed}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


class Standalone(NamedTuple):
    url: str
    worker_pids: list[int]  # spark-class execs the Worker JVM: these are the JVMs

    def executor_pids(self) -> list[int]:
        """The executor JVMs that this fixture's workers started (their children), nobody else's."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parent = int(stat[stat.rindex(")") + 2:].split()[1])
                if parent in self.worker_pids and b"CoarseGrainedExecutorBackend" in \
                        Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except (OSError, ValueError):  # gone meanwhile
                pass
        return found


@contextlib.contextmanager
def standalone_cluster(tmp_path, workers: int, cores: int, python: str | None = sys.executable):
    """A standalone master and ``workers`` workers of ``cores`` cores on 127.0.0.1, from the pyspark package
    (``python``: the executors' PYSPARK_PYTHON; None: PySpark's default): (the master's URL, the workers' pids)."""
    import pyspark
    spark_home = Path(pyspark.__file__).parent
    spark_class = str(spark_home / "bin" / "spark-class")
    env = dict(os.environ, SPARK_HOME=str(spark_home), SPARK_LOG_DIR=str(tmp_path), SPARK_WORKER_DIR=str(tmp_path),
               SPARK_LOCAL_IP="127.0.0.1")
    if python:
        env["PYSPARK_PYTHON"] = python
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    procs = [subprocess.Popen([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(free_port())], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_for_port(port)
        for _ in range(workers):
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores",
                 str(cores), "--memory", "1g", "--webui-port", str(free_port()), "--work-dir", str(tmp_path)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield url, [p.pid for p in procs[1:]]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def standalone(tmp_path):
    """A standalone master and two one-core workers on 127.0.0.1."""
    with standalone_cluster(tmp_path, workers=2, cores=1) as (url, pids):
        yield Standalone(url, pids)


def test_standalone_master_with_two_workers(standalone, mnist):
    session = msp.session(standalone.url, conf={"spark.ui.enabled": "false", "spark.executor.memory": "1g",
                                            "spark.driver.host": "127.0.0.1"})
    try:
        sc = session.sparkContext
        deadline = time.time() + 60
        while sc._jsc.sc().getExecutorMemoryStatus().size() < 3 and time.time() < deadline:  # driver + 2
            time.sleep(0.5)
        assert sc._jsc.sc().getExecutorMemoryStatus().size() == 3, "two workers did not register"
        check_trainer(session, mnist)
    finally:
        session.stop()


@pytest.mark.parametrize("backup_workers", [0, 1])
def test_a_killed_executor_loses_no_shard_and_changes_no_result(standalone, mnist, backup_workers):
    """SIGKILL one of the two executors mid-fit: its tasks run again elsewhere on the same staged rows."""
    import signal

    from mnist_lenet_spark.cluster import staging
    from mnist_lenet_spark.executor.straggler import StragglerModel
    session = msp.session(standalone.url, conf={"spark.ui.enabled": "false", "spark.executor.memory": "1g",
                                            "spark.driver.host": "127.0.0.1"})
    try:
        sc = session.sparkContext
        sc.setLogLevel("ERROR")
        deadline = time.time() + 60
        while len(standalone.executor_pids()) < 2 and time.time() < deadline:
            time.sleep(0.5)
        images, labels = mnist.train.images[:600], mnist.train.labels[:600]
        rows = session.createDataFrame([(int(y), x.tobytes()) for x, y in zip(images, labels)],
                                       "label long, features binary")
        slow = StragglerModel(delay=0.3, slow_partitions=tuple(range(2 + backup_workers)))  # time to kill mid-step
        sgd = msp.SyncSGD(session, 2, batch_size=16, seed=5, max_steps=10, backup_workers=backup_workers,
                          straggler=slow)
        killed = []

        def kill_one_executor(record):
            if record["step"] == 3:
                pid = standalone.executor_pids()[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        result, _ = staging.fit_dataframes(sgd, rows, None, "features", "label", on_step=kill_one_executor)
        assert killed and killed[0] not in standalone.executor_pids()
        assert [h["step"] for h in result.history] == list(range(1, 11))
        if backup_workers == 0:  # every step used every shard: the same as an undisturbed run on arrays
            reference = msp.SyncSGD(session, 2, batch_size=16, seed=5).fit(images, labels, max_steps=10)
            for k, v in reference.params.items():
                np.testing.assert_allclose(result.params[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
        else:  # N of N + b results each step, whichever finished first
            assert all(len(h["kept"]) == 2 for h in result.history)
    finally:
        session.stop()

"""The one-job engine's coordinator in the cluster (``coordinator='cluster'``: one more task of a barrier job runs
it, for a Spark Connect client the executors cannot reach), on a local Spark Connect server: the same parameters as
with the coordinator in the client; backup workers, asynchronous mode, validation and early stopping in the
coordinator's task; a killed job run again from the fit's start; a bad row still one line. The namespace cluster
(tests/test_netns_connect.py) has the client on a host the executors cannot reach."""
import logging
import os
import signal
import threading
import time

import numpy as np
import pytest

from mnist_lenet_spark.async_sgd import AsyncSGD
from mnist_lenet_spark.cluster import one_job
from mnist_lenet_spark.config import ConfigError
from mnist_lenet_spark.data import DataError
from mnist_lenet_spark.spark import SyncSGD
from tests.test_connect import mnist_frame, no_spark_context  # noqa: F401  (the guard: no SparkContext, no RDD)


@pytest.fixture(scope="module")
def servers():
    from mnist_lenet_spark.session import local_connect
    # local[4,2]: four task slots (2 workers + 1 backup + the coordinator); a job is tried twice
    server, client = local_connect("local[4,2]", {"spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"})
    yield server, client
    client.stop()  # and the server


@pytest.fixture(scope="module")
def connect(servers):
    return servers[1]


@pytest.fixture(scope="module")
def arrays(mnist):
    return mnist.train.images[:960], mnist.train.labels[:960], (mnist.train.images[5000:5300],
                                                                  mnist.train.labels[5000:5300])


def test_the_coordinator_in_the_cluster_gives_the_clients_parameters(connect, arrays):
    X, y, validation = arrays
    df = one_job.frame_of(connect, X, y)
    here = SyncSGD(connect, 2, batch_size=16).fit_frame(df, validation, max_steps=40, coordinator="client")
    seen = []
    there = SyncSGD(connect, 2, batch_size=16).fit_frame(df, validation, max_steps=40, coordinator="cluster",
                                                         on_step=seen.append)
    for name, value in here.params.items():
        np.testing.assert_array_equal(there.params[name], value, err_msg=name)
    assert [h["loss"] for h in there.history] == [h["loss"] for h in here.history]
    assert seen == there.history and len(seen) == 30  # one epoch of 960 / (2 x 16); on_step once the job ended
    assert [v["step"] for v in there.validation] == [30] and there.validation[0]["accuracy"] > 0.6
    assert sorted(r.shard for r in there.tasks) == [0, 1] and all(r.ended == "budget" for r in there.tasks)


def test_backup_workers_and_the_asynchronous_mode_with_the_coordinator_in_the_cluster(connect, arrays):
    X, y, validation = arrays
    df = one_job.frame_of(connect, X, y)
    sync = SyncSGD(connect, 2, backup_workers=1, batch_size=16).fit_frame(df, max_steps=20, coordinator="cluster")
    assert all(h["examples"] == 32 and len(h["kept"]) == 2 and len(h["dropped"]) == 1 for h in sync.history)
    assert len(sync.history) == 20
    run = AsyncSGD(connect, 2, batch_size=16).fit_frame(df, validation, epochs=3, max_steps=150,
                                                        coordinator="cluster")
    assert len(run.history) == 150 and run.state.step == 150 and sum(run.state.positions) >= 150
    assert run.validation[-1]["accuracy"] > 0.4  # 150 updates of 16 images (chance: 0.1)


def test_early_stopping_runs_in_the_coordinators_task(connect, mnist):
    from pyspark.sql import functions as F
    from mnist_lenet_spark.ml import NetworkClassifier
    df = mnist_frame(connect, mnist, 240).withColumn("isVal", F.rand(seed=1) < 0.25)
    model = NetworkClassifier(workers=2, batchSize=16, lr=1e-9, validationIndicatorCol="isVal", epochs=10,
                              earlyStoppingPatience=2, earlyStoppingMetric="accuracy", earlyStoppingMinDelta=0.01,
                              coordinator="cluster").fit(df)
    summary = model.summary  # lr ~ 0: the accuracy never improves by 0.01, so patience 2 ends it at epoch 3
    assert summary.stopped_early and summary.stopped_step == summary.validation[2]["step"] == len(summary.history)


def test_a_bad_row_is_one_line_and_the_checkpoint_interval_is_refused(connect, mnist, tmp_path):
    from pyspark.sql import functions as F
    df = mnist_frame(connect, mnist, 120)
    bad = df.withColumn("label", F.when(F.col("label") == 7, F.lit(12.0)).otherwise(F.col("label")))
    with pytest.raises(DataError, match=r"^row \d+: column 'label' is outside 0\.\.9: 12\.0 \(example row: "
                                        r"label=12\.0, features="):
        SyncSGD(connect, 2, batch_size=16).fit_frame(bad, max_steps=3, coordinator="cluster")
    with pytest.raises(ConfigError, match=r"^checkpoint every 5 steps: with the coordinator in the cluster only"):
        SyncSGD(connect, 2, batch_size=16).fit_frame(df, max_steps=3, coordinator="cluster",
                                                     checkpoint=lambda state: None, checkpoint_every=5)
    with pytest.raises(ConfigError, match=r"^coordinator: must be one of auto, client, cluster, got 'driver'$"):
        SyncSGD(connect, 2, batch_size=16).fit_frame(df, max_steps=3, coordinator="driver")


def test_too_few_task_slots_for_the_barrier_job_is_one_line_naming_both_numbers(connect, arrays):
    X, y, _ = arrays
    with pytest.raises(ConfigError, match=r"^the training job needs 5 task slots at once .*; the cluster has 4: "):
        SyncSGD(connect, 3, backup_workers=1, batch_size=16).fit_frame(one_job.frame_of(connect, X, y), max_steps=3,
                                                                       coordinator="cluster")


def test_auto_finds_that_the_executors_reach_this_process(connect):
    assert one_job.reachable(connect) is None and one_job.place_of(connect, "auto") == "client"


def _python_workers() -> list[int]:
    """The pids of the PySpark daemon's workers among this process's own descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    daemon = b"pyspark.daemon" in f.read()
            except OSError:
                continue
            found += children.get(child, []) if daemon else []
            todo.append(child)
    return found


def _once_training(server, act) -> threading.Thread:
    """A thread that calls ``act()`` half a second after the barrier job's 3 tasks all run (bounded: 120 s)."""
    tracker = server.sparkContext.statusTracker()

    def wait_then_act():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for stage in tracker.getActiveStageIds():
                info = tracker.getStageInfo(stage)
                if info is not None and info.numTasks == 3 and info.numActiveTasks == 3:
                    time.sleep(0.5)
                    act()
                    return
            time.sleep(0.05)
    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def test_a_killed_training_job_runs_again_from_the_start(servers, arrays, caplog):
    server, connect = servers
    X, y, _ = arrays
    df = one_job.frame_of(connect, X, y)
    straight = SyncSGD(connect, 2, batch_size=16).fit_frame(df, epochs=20, max_steps=400, coordinator="cluster")
    killed = []

    def kill():  # every Python worker: the coordinator's task too
        for pid in _python_workers():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    killer = _once_training(server, kill)
    with caplog.at_level(logging.WARNING, logger="mnist_lenet_spark.cluster.one_job"):
        again = SyncSGD(connect, 2, batch_size=16).fit_frame(df, epochs=20, max_steps=400, coordinator="cluster")
    killer.join(5)
    assert killed, "no Python worker was found to kill"
    assert "running it again from the fit's start (2 of 2)" in caplog.text
    assert not set(killed) & {r.pid for r in again.tasks}  # the reports are the second job's
    for name, value in straight.params.items():
        np.testing.assert_array_equal(again.params[name], value, err_msg=name)


def test_an_interrupted_fit_is_not_run_again(servers, arrays, caplog):
    from mnist_lenet_spark.cluster.task_errors import StepFailure
    server, connect = servers
    X, y, _ = arrays
    df = one_job.frame_of(connect, X, y)
    interrupter = _once_training(server, connect.interruptAll)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="mnist_lenet_spark.cluster.one_job"):
        with pytest.raises(StepFailure, match=r"^the training job was interrupted: .*OPERATION_CANCELED"):
            SyncSGD(connect, 2, batch_size=16).fit_frame(df, epochs=1000, max_steps=3000, coordinator="cluster")
    interrupter.join(5)
    assert time.monotonic() - started < 60 and "running it again" not in caplog.text


def test_mlflow_logs_each_step_from_the_client_with_the_coordinator_in_the_cluster(connect, mnist, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from mnist_lenet_spark.ml import NetworkClassifier
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        mlflow.set_experiment(experiment_id=mlflow.create_experiment(
            "connect", artifact_location=(tmp_path / "artifacts").as_uri()))
        model = NetworkClassifier(workers=2, backupWorkers=1, batchSize=16, maxSteps=3, coordinator="cluster",
                                  mlflowTracking=True).fit(mnist_frame(connect, mnist, 240))
        client = mlflow.MlflowClient()
        run = client.get_run(model.summary.mlflow_run_id)
        assert run.info.status == "FINISHED" and run.data.params["backup_workers"] == "1"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "dropped_tasks")]
        assert sorted(steps) == [1, 2, 3]  # each step's, once the job has ended
    finally:
        mlflow.set_tracking_uri(before)

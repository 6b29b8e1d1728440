"""The asynchronous mode as users reach it: the job's --mode async and the estimator's mode='async' on local[2],
the settings it refuses, and its checkpoints and resume (AsyncSGD, the job)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from mnist_lenet_spark import models
from mnist_lenet_spark.async_sgd import AsyncSGD
from mnist_lenet_spark.config import ConfigError, SGDConfig
from mnist_lenet_spark import local
from mnist_lenet_spark.loop import checkpoint, update
from mnist_lenet_spark.ml import LeNetClassificationModel, LeNetClassifier, NetworkClassifier
from tests.conftest import ROOT, load_job, own_tracebacks

train_lenet = load_job("train_lenet")
JOB = [sys.executable, str(ROOT / "jobs" / "train_lenet.py"), "--master", "local[2]", "--no-progress",
       "--conf", str(ROOT / "conf" / "spark-defaults.conf")]


def run(*flags, check=True):
    proc = subprocess.run(JOB + list(flags), capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def binary_rows(spark, images, labels, slices=3):
    rows = [(int(label), image.tobytes()) for image, label in zip(images, labels)]
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, slices), "label long, features binary")


# -- the job ------------------------------------------------------------------------------------------------
def test_the_job_in_async_mode_trains_and_reports_staleness_and_updates_per_second(tmp_path):
    summary, metrics = tmp_path / "s.json", tmp_path / "m.jsonl"
    # 384 images, 2 shards of 192, batch 32: 12 updates an epoch
    proc = run("--mode", "async", "--limit-train", "384", "--batch-size", "32", "--summary", str(summary),
               "--metrics", str(metrics), "--model-out", str(tmp_path / "model.npz"))
    s = json.loads(summary.read_text())
    assert s["status"] == "ok" and s["mode"] == "async" and s["updates"] == s["steps"] == 12
    assert s["examples"] == 384 and s["workers"] == 2 and s["backup_workers"] == 0
    assert 0 <= s["staleness_mean"] <= s["staleness_max"] and 0 <= s["staleness_p90"] <= s["staleness_max"]
    assert s["updates_per_second"] > 0 and s["lost_shards"] == []
    refused = s["refused_pushes"]  # at most the other task's push, in flight when the budget was spent
    assert refused["budget spent"] <= 1 and refused["old attempt"] == refused["too stale"] == 0, refused
    assert "step_seconds_median" not in s  # an update's seconds are its apply, not a step
    assert 0 <= s["test_accuracy"] <= 1 and s["validation_accuracy"] is not None  # validated once, at the end
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 13)) and all(r["examples"] == 32 for r in lines)
    assert [r["staleness"] for r in lines] != [None] * 12 and all(r["staleness"] >= 0 for r in lines)
    assert "updates 12, " in proc.stdout and "staleness mean" in proc.stdout and "test accuracy:" in proc.stdout
    with np.load(tmp_path / "model.npz") as z:
        assert z["fc1.W"].shape == (3136, 512)
    assert not own_tracebacks(proc.stderr), proc.stderr[-2000:]


@pytest.mark.parametrize("flags,message", [
    (["--backup-workers", "1"], "--backup-workers 1: the asynchronous mode (--mode async) has no steps to drop "
                                "stragglers from; set 0"),
    (["--backup-mode", "wait-all"], "--backup-mode: not with --mode async"),
    (["--backup-combine", "executors"], "--backup-combine: not with --mode async"),
    (["--validate-every", "5"], "--validate-every: not with --mode async"),
    (["--early-stopping-patience", "2"], "--early-stopping-patience: not with --mode async"),
])
def test_flags_the_async_mode_has_no_use_for_are_one_line_and_status_2(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        train_lenet.parse_args(["--mode", "async", *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert train_lenet.parse_args(["--mode", "async", "--backup-workers", "0"]).mode == "async"
    assert train_lenet.parse_args([]).mode == "sync"


def test_backup_workers_from_the_training_conf_with_async_is_one_line_and_status_2(tmp_path):
    conf = tmp_path / "training.json"
    conf.write_text('{"workers": 2, "backup_workers": 1}')
    proc = run("--mode", "async", "--training-conf", str(conf), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("train_lenet: error: --backup-workers 1: the asynchronous mode "
                                                    "(--mode async) has no steps to drop stragglers from; set 0")
    assert not own_tracebacks(proc.stderr), proc.stderr[-2000:]


@pytest.mark.parametrize("written,resumed", [("sync", "async"), ("async", "sync")])
def test_a_checkpoint_resumes_only_in_the_mode_that_wrote_it(tmp_path, written, resumed):
    """Refused before Spark starts: one line, status 2."""
    _, state = update.new_state(models.network_from("lenet"), 0)
    if written == "async":
        state.positions = [3, 2]
    state.step = 5
    checkpoint.save_checkpoint(tmp_path / "checkpoint.npz", state, SGDConfig())
    proc = run("--mode", resumed, "--checkpoint-dir", str(tmp_path), "--resume", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"train_lenet: error: {tmp_path / 'checkpoint.npz'}: written with --mode {written}, resumed with --mode "
        f"{resumed} (a run goes on in the mode it started in)")


def test_the_job_resumes_an_async_run_with_its_update_count_continued(tmp_path):
    """One worker: nothing is left to the arrival order, so the resumed run equals an uninterrupted one exactly,
    which is the single-process trainer's (tests/test_async.py)."""
    from threadpoolctl import threadpool_limits
    from mnist_lenet_spark import data
    common = ["--mode", "async", "--workers", "1", "--limit-train", "96", "--batch-size", "16", "--epochs", "2"]
    run(*common, "--max-steps", "4", "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-every", "2")
    state, meta = checkpoint.load_checkpoint(tmp_path / "ck" / "checkpoint.npz")
    assert (state.step, state.positions, meta["mode"]) == (4, [4], "async")
    run(*common, "--max-steps", "9", "--checkpoint-dir", str(tmp_path / "ck"), "--resume",
        "--model-out", str(tmp_path / "resumed.npz"), "--metrics", str(tmp_path / "m.jsonl"))
    assert [json.loads(line)["step"] for line in (tmp_path / "m.jsonl").read_text().splitlines()] == [5, 6, 7, 8, 9]
    train = data.load_mnist().train
    with threadpool_limits(limits=1):  # one BLAS thread, as the task computes
        straight = local.fit_local(train.images[:96], train.labels[:96], SGDConfig(batch_size=16, epochs=2,
                                                                                   max_steps=9))
    with np.load(tmp_path / "resumed.npz") as resumed:
        for k, v in straight.params.items():
            np.testing.assert_array_equal(resumed[k], v, err_msg=k)


# -- AsyncSGD's checkpoints ---------------------------------------------------------------------------------
def test_one_worker_resumed_from_a_checkpoint_equals_an_uninterrupted_run(spark, mnist, tmp_path):
    """The checkpoint restores the parameters, the velocity, the update count (and with it the learning rate's
    place in its schedule and the epoch) and the shard's position: with one worker, bit for bit."""
    from threadpoolctl import threadpool_limits
    images, labels = mnist.train.images[:96], mnist.train.labels[:96]  # 6 updates an epoch
    path = tmp_path / "checkpoint.npz"
    written = []

    def save(state):
        written.append(state.step)
        checkpoint.save_checkpoint(path, state, SGDConfig())
    AsyncSGD(spark, workers=1, batch_size=16, seed=3).fit(images, labels, epochs=2, max_steps=4, checkpoint=save,
                                                          checkpoint_every=2)
    state, _ = checkpoint.load_checkpoint(path)
    assert written == [2, 4] and (state.step, state.epoch, state.positions) == (4, 0, [4])
    resumed = AsyncSGD(spark, workers=1, batch_size=16, seed=3).fit(images, labels, epochs=2, max_steps=9,
                                                                    state=state)
    with threadpool_limits(limits=1):
        single = local.fit_local(images, labels, SGDConfig(batch_size=16, seed=3, epochs=2, max_steps=9))
    assert [h["step"] for h in resumed.history] == [5, 6, 7, 8, 9]
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in single.history[4:]]  # across the epoch's end
    assert resumed.state.positions == [9] and resumed.staleness == [0] * 5
    for k in single.params:
        np.testing.assert_array_equal(resumed.params[k], single.params[k], err_msg=k)


def test_two_workers_resume_with_the_count_and_each_shards_position_continued(spark, mnist, tmp_path):
    """Resumed from a checkpoint written mid-run (the other task's gradient in flight, as when a driver dies after
    writing it): the update count, the learning rates and each shard's walk go on from it."""
    images, labels = mnist.train.images[:256], mnist.train.labels[:256]  # 2 shards x 8 mini-batches of 16
    path = tmp_path / "checkpoint.npz"

    def save(state):
        if state.step == 6:
            checkpoint.save_checkpoint(path, state, SGDConfig())
    AsyncSGD(spark, workers=2, batch_size=16).fit(images, labels, max_steps=10, checkpoint=save, checkpoint_every=3)
    state, _ = checkpoint.load_checkpoint(path)
    assert state.step == 6 and sum(state.positions) == 6 and len(state.positions) == 2
    before = list(state.positions)
    config = SGDConfig(batch_size=16, epochs=2)
    resumed = AsyncSGD(spark, workers=2, config=config).fit(images, labels, max_steps=20, state=state)
    assert [h["step"] for h in resumed.history] == list(range(7, 21))
    assert [h["lr"] for h in resumed.history] == [config.learning_rate(u // 16, u, 20) for u in range(6, 20)]
    pushed = [sum(h["shard"] == k for h in resumed.history) for k in (0, 1)]
    assert resumed.state.positions == [before[0] + pushed[0], before[1] + pushed[1]]


def test_a_state_of_the_other_mode_is_refused(spark, mnist):
    from mnist_lenet_spark.spark import SyncSGD
    images, labels = mnist.train.images[:64], mnist.train.labels[:64]
    _, state = update.new_state(models.network_from("lenet"), 0)
    with pytest.raises(ConfigError, match=r"state: it is a synchronous run's \(no shard positions\)"):
        AsyncSGD(spark, workers=2, batch_size=16).fit(images, labels, max_steps=2, state=state)
    state.positions = [0, 0, 0]
    with pytest.raises(ConfigError, match="state: it has the positions of 3 shards, this run has 2 workers"):
        AsyncSGD(spark, workers=2, batch_size=16).fit(images, labels, max_steps=2, state=state)
    with pytest.raises(ConfigError, match=r"state: it is an asynchronous run's \(AsyncSGD\)"):
        SyncSGD(spark, 2, batch_size=16).fit(images, labels, max_steps=2, state=state)


# -- the estimator ------------------------------------------------------------------------------------------
def test_the_estimator_in_async_mode_fits_transforms_saves_and_loads(spark, mnist, tmp_path):
    images, labels = mnist.train.images[:300], mnist.train.labels[:300]
    df = binary_rows(spark, images, labels)
    model = LeNetClassifier(mode="async", workers=2, batchSize=16, maxSteps=10, seed=3,
                            checkpointDir=str(tmp_path / "ck")).fit(df)
    s = model.summary
    assert s.mode == "async" and len(s.history) == 10 and s.updates_per_second > 0
    assert 0 <= s.staleness["mean"] <= s.staleness["max"] and 0 <= s.staleness["p90"] <= s.staleness["max"]
    assert s.staleness["max"] == max(h["staleness"] for h in s.history)
    state, _ = checkpoint.load_checkpoint(tmp_path / "ck" / "checkpoint.npz")
    assert state.step == 10 and sum(state.positions) == 10
    model.write().overwrite().save(str(tmp_path / "model"))
    loaded = LeNetClassificationModel.load(str(tmp_path / "model"))
    assert loaded.getMode() == "async" and not loaded.hasSummary
    assert all(np.array_equal(loaded.weights[k], v) for k, v in model.weights.items())
    rows = loaded.transform(df).select("prediction").collect()  # in the rows' order
    assert [r.prediction for r in rows] == model.predict(images).tolist()
    sync = LeNetClassifier(workers=2, batchSize=16, maxSteps=2).fit(df).summary
    assert (sync.mode, sync.staleness, sync.updates_per_second) == ("sync", None, None)


@pytest.mark.parametrize("params,message", [
    ({"mode": "async", "backupWorkers": 1}, "backupWorkers 1: the asynchronous mode (mode async) has no steps to "
                                            "drop stragglers from; set 0"),
    ({"mode": "async", "earlyStoppingPatience": 2, "validationIndicatorCol": "v"},
     "earlyStoppingPatience 2: the asynchronous mode (mode async) validates once, at the end; set 0"),
    ({"mode": "hogwild"}, "mode: must be one of sync, async, got 'hogwild'"),
])
def test_the_estimator_refuses_what_the_async_mode_has_no_use_for(spark, mnist, params, message):
    df = binary_rows(spark, mnist.train.images[:32], mnist.train.labels[:32], slices=1)
    with pytest.raises(ConfigError) as e:
        NetworkClassifier(batchSize=8, maxSteps=2, **params).fit(df)
    assert str(e.value) == message

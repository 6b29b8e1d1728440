"""The Spark trainer against the single-process one, on local[2]."""
import numpy as np
import pytest

from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.config import BackupConfig, ConfigError, SGDConfig
from mnist_lenet_spark.executor import inference, tasks
from mnist_lenet_spark import local
from mnist_lenet_spark.loop import checkpoint
from mnist_lenet_spark import models
from tests.conftest import tiny_problem
from tests.reference import rel_error

lenet = models.network_from("lenet")  # the preset, as a model object


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-4), (np.float64, 1e-10)])
def test_gradient_equals_single_process(spark, workers, dtype, tol):
    params, X, y = tiny_problem(7, seed=workers, dtype=dtype)  # 7 examples: uneven splits for 2, 3 and 4
    loss, grads = msp.SyncSGD(spark, workers=workers).gradient(params, X, y)
    loss0, grads0 = lenet.loss_and_grads(params, X, y, train=False, l2=SGDConfig.l2)
    assert loss == pytest.approx(loss0, rel=tol)
    for k in grads0:
        assert grads[k].dtype == dtype
        assert rel_error(grads[k], grads0[k]) < tol, k


def small_split(mnist, n):
    return mnist.train.images[:n], mnist.train.labels[:n]


@pytest.mark.parametrize("workers,batch,n", [(2, 16, 96), (3, 10, 100)])  # 100 / 3 shards: short last batches
def test_fit_without_dropout_equals_single_process_trainer(spark, mnist, workers, batch, n):
    images, labels = small_split(mnist, n)
    sgd = msp.SyncSGD(spark, workers=workers, batch_size=batch, seed=3, dropout=False)
    result = sgd.fit(images, labels, epochs=2, max_steps=6)
    config = SGDConfig(batch_size=batch, seed=3, dropout=False, epochs=2, max_steps=6)
    single = local.fit_local(images, labels, config, shards=workers)
    assert [h["examples"] for h in result.history] == [h["examples"] for h in single.history]
    assert [h["loss"] for h in result.history] == pytest.approx([h["loss"] for h in single.history], rel=1e-5)
    for k in single.params:
        assert rel_error(result.params[k], single.params[k]) < 1e-4, k


def test_fit_with_dropout_matches_single_process_trainer_too(spark, mnist):
    # dropout masks come from (seed, epoch, step, shard), so they are the same on every executor
    images, labels = small_split(mnist, 64)
    result = msp.SyncSGD(spark, workers=2, batch_size=16, seed=1).fit(images, labels, max_steps=3)
    single = local.fit_local(images, labels, SGDConfig(batch_size=16, seed=1, max_steps=3), shards=2)
    assert rel_error(result.params["fc1.W"], single.params["fc1.W"]) < 1e-4


def test_python_workers_are_reused_between_steps(spark, mnist):
    images, labels = small_split(mnist, 256)
    result = msp.SyncSGD(spark, workers=2, batch_size=16).fit(images, labels, max_steps=6)
    pids = [tuple(h["pids"]) for h in result.history[1:]]
    assert len(set(pids)) == 1, pids


def test_a_warm_up_job_readies_both_workers_before_the_first_step_and_is_timed_apart(spark, mnist):
    images, labels = small_split(mnist, 256)
    sgd = msp.SyncSGD(spark, workers=2, batch_size=16)
    result = sgd.fit(images, labels, max_steps=3)
    assert len(sgd.warm_pids) == 2  # one blank step on each of the two concurrent workers
    assert result.setup_seconds > 0
    for h in result.history:  # each task's own time, inside the step's time
        assert 0 < h["task_seconds"] < h["seconds"]


def test_each_task_limits_blas_to_its_cores(spark):
    threads = spark.sparkContext.parallelize([0, 1], 2).mapPartitions(
        lambda it: (list(it), tasks.tune_process(1), [tasks.blas_threads()])[2]).collect()
    assert threads and all(t and all(n == 1 for n in t) for t in threads)


def test_training_reduces_loss_and_validation_runs_on_the_cluster(spark, mnist):
    images, labels = small_split(mnist, 2000)
    val = (mnist.validation.images[:300], mnist.validation.labels[:300])
    sgd = msp.SyncSGD(spark, workers=2, batch_size=32, validate_every=10)
    result = sgd.fit(images, labels, epochs=1, validation_data=val)
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert [v["step"] for v in result.validation][:2] == [10, 20]
    assert result.validation[-1]["accuracy"] > 0.7
    local_acc = inference.count_correct(lenet, result.params, *val) / 300
    assert result.validation[-1]["accuracy"] == pytest.approx(local_acc)


def test_resume_gives_identical_parameters(spark, mnist, tmp_path):
    images, labels = small_split(mnist, 400)
    sgd = msp.SyncSGD(spark, workers=2, batch_size=16, seed=4)
    straight = sgd.fit(images, labels, epochs=2, max_steps=20)
    path = tmp_path / "ckpt.npz"
    first = sgd.fit(images, labels, epochs=2, max_steps=10,
                    checkpoint=lambda st: checkpoint.save_checkpoint(path, st, sgd.config), checkpoint_every=10)
    state, meta = checkpoint.load_checkpoint(path)
    assert meta["step"] == 10 and state.step == 10
    resumed = sgd.fit(images, labels, epochs=2, max_steps=20, state=state)
    assert [h["step"] for h in resumed.history] == list(range(11, 21))
    for k in straight.params:
        assert np.array_equal(straight.params[k], resumed.params[k]), k
    assert first.history[-1]["step"] == 10


def test_learning_rate_decays_per_epoch_and_warms_up(spark, mnist):
    images, labels = small_split(mnist, 64)
    result = msp.SyncSGD(spark, workers=2, batch_size=16, warmup_steps=2, lr=0.1).fit(images, labels, epochs=2)
    lrs = [h["lr"] for h in result.history]
    assert lrs == pytest.approx([0.05, 0.1, 0.095, 0.095])


def test_cosine_schedule_falls_per_step_to_zero_at_the_end(spark, mnist):
    images, labels = small_split(mnist, 64)
    result = msp.SyncSGD(spark, workers=2, batch_size=16, warmup_steps=1, lr=0.1, lr_schedule="cosine").fit(
        images, labels, epochs=2)
    lrs = [h["lr"] for h in result.history]  # 4 steps: the warm-up's, then t = 0, 1/3, 2/3 of the cosine
    assert lrs == pytest.approx([0.1, 0.1, 0.075, 0.025])


@pytest.mark.parametrize("kwargs,message", [
    ({"lr_schedule": "step"}, "lr_schedule must be one of exponential, cosine"),
    ({"workers": 0}, "workers must be"), ({"batch_size": -1}, "batch_size must be"),
    ({"lr": float("nan")}, "lr must be"), ({"backup_workers": -1}, "backup_workers must be"),
])
def test_bad_settings_raise_config_errors(spark, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        msp.SyncSGD(spark, **kwargs)


def test_too_few_examples_for_the_tasks(spark, mnist):
    sgd = msp.SyncSGD(spark, workers=4, backup_workers=1)
    with pytest.raises(ConfigError, match="need at least 5 training examples"):
        sgd.fit(*small_split(mnist, 3))
    # the warm-up job that fit started ended with the call: nothing of it runs on after the error
    assert sgd.warm_pids and not spark.sparkContext.statusTracker().getActiveJobsIds()


def test_linear_lr_scaling_follows_the_effective_batch(spark):
    assert msp.SyncSGD(spark, workers=4, batch_size=32, lr_scaling="linear").config.lr == pytest.approx(0.02)
    assert msp.SyncSGD(spark, workers=4, batch_size=32).config.lr == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="lr_scaling must be"):
        msp.SyncSGD(spark, lr_scaling="sqrt")


def test_config_objects_and_keyword_options_build_the_same_trainer(spark):
    by_keywords = msp.SyncSGD(spark, workers=3, batch_size=32, seed=4, lr=0.02, backup_workers=1,
                              backup_mode="wait-all")
    by_config = msp.SyncSGD(spark, 3, config=SGDConfig(batch_size=32, seed=4, lr=0.02),
                            backup=BackupConfig(workers=1, mode="wait-all"))
    assert by_keywords.config == by_config.config and by_keywords.backup == by_config.backup
    overridden = msp.SyncSGD(spark, config=SGDConfig(lr=0.5), lr=0.1)  # a keyword wins over the config
    assert overridden.config.lr == 0.1 and overridden.config.batch_size == SGDConfig().batch_size
    with pytest.raises(TypeError, match="unexpected keyword argument 'learning_rate'"):
        msp.SyncSGD(spark, learning_rate=0.1)
    with pytest.raises(ConfigError, match="batch_size must be int, got 32.0"):
        msp.SyncSGD(spark, batch_size=32.0)

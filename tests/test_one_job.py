"""The one-job engine on a classic session: synchronous SGD at b = 0 gives the per-step engine's parameters for the
same batches in the same order (two workers: the same two sums, so bit for bit), and the estimator takes it by Param."""
import numpy as np
import pytest

from mnist_lenet_spark import fit, models
from mnist_lenet_spark.cluster import staging
from mnist_lenet_spark.config import ConfigError, SGDConfig
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.ml import NetworkClassifier
from mnist_lenet_spark.spark import SyncSGD

SPARK_MASTER = "local[4,8]"  # three tasks at once, and Spark retries a failed one up to 7 times


def mnist_frame(spark, mnist, rows, partitions=3):
    from pyspark.ml.linalg import Vectors
    X, y = mnist.train.images[:rows], mnist.train.labels[:rows]
    data = [(Vectors.dense(x.reshape(-1).astype(float)), int(label)) for x, label in zip(X, y)]
    return spark.createDataFrame(data, ["features", "label"]).repartition(partitions)


def test_sync_at_b0_gives_the_per_step_engines_parameters(spark, mnist, tmp_path):
    df = mnist_frame(spark, mnist, 500).cache()
    one = SyncSGD(spark, 2, batch_size=16, seed=3).fit_frame(df, max_steps=8)
    per_step, _ = staging.fit_dataframes(SyncSGD(spark, 2, batch_size=16, seed=3), df, None, "features", "label",
                                          max_steps=8)
    assert len(one.history) == len(per_step.history) == 8
    assert [h["examples"] for h in one.history] == [h["examples"] for h in per_step.history]
    for name, value in per_step.params.items():
        np.testing.assert_array_equal(one.params[name], value, err_msg=name)


def test_the_estimator_takes_the_engine_by_param(spark, mnist):
    df = mnist_frame(spark, mnist, 320)
    model = NetworkClassifier(engine="one-job", workers=2, batchSize=16, maxSteps=5).fit(df)
    assert len(model.summary.history) == 5 and "kept" in model.summary.history[0]
    with pytest.raises(ConfigError, match="^engine: must be one of auto, per-step, one-job, got 'fast'$"):
        NetworkClassifier(engine="fast").fit(df)
    with pytest.raises(ConfigError, match="^backupCombine 'executors': the one-job engine adds them in the driver; "
                                          "leave it 'driver'$"):
        NetworkClassifier(engine="one-job", backupWorkers=1, backupCombine="executors").fit(df)


def test_arrays_on_the_one_job_engine_train_as_on_the_per_step_engine(spark, mnist):
    images, labels = mnist.train.images[:400], mnist.train.labels[:400]
    validation = (mnist.validation.images[:200], mnist.validation.labels[:200])
    results = []
    for engine in ("per-step", "one-job"):
        plan = fit.FitPlan(models.network_from("lenet"), "lenet", 2, engine=engine,
                           config=SGDConfig(batch_size=16, max_steps=6, validate_every=3))
        results.append(fit.run(fit.trainer(spark, plan), plan, fit.Arrays(images, labels, validation)).result)
    per_step, one = results
    for name, value in per_step.params.items():
        np.testing.assert_array_equal(one.params[name], value, err_msg=name)
    assert [v["step"] for v in one.validation] == [v["step"] for v in per_step.validation] == [3, 6]
    assert [v["accuracy"] for v in one.validation] == [v["accuracy"] for v in per_step.validation]


def test_failed_task_attempts_are_retried_and_rejoin_while_sync_goes_on(spark, mnist):
    flaky = StragglerModel(failure_prob=0.05)  # a task attempt fails at each step with this chance (injected)
    result = SyncSGD(spark, 2, backup_workers=1, batch_size=16, straggler=flaky).fit_frame(
        mnist_frame(spark, mnist, 1440), max_steps=30)
    assert [h["step"] for h in result.history] == list(range(1, 31))
    assert all(h["examples"] == 32 for h in result.history)
    retried = [r for r in result.tasks if r.attempt > 0]
    assert retried, result.tasks  # 3 tasks x 30 steps: no failure at all has a chance of about 1 %
    assert sorted({r.shard for r in result.tasks if r.ended == "budget"}) == [0, 1, 2]  # every shard to the end

"""Spark Connect: a local Spark Connect server (pyspark's ``remote("local[4]")``) trains with the one-job engine
(sync with a backup worker, async), saves and serves; the shards are cut as staging cuts them; a bad row and too few
task slots are one line each.

Every test here runs under a guard that fails it on any use of a SparkContext or an RDD: a Connect client has
neither, although the local server's SparkContext lives in this process."""
import numpy as np
import pytest

from mnist_lenet_spark.cluster import one_job
from mnist_lenet_spark.config import ConfigError
from mnist_lenet_spark.data import DataError
from mnist_lenet_spark.executor import one_job as task_side
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.loop import sharding
from mnist_lenet_spark.ml import NetworkClassificationModel, NetworkClassifier
from mnist_lenet_spark.spark import SyncSGD


@pytest.fixture(scope="module")
def connect(connect_pair):
    return connect_pair[1]  # the client (conftest)


@pytest.fixture(autouse=True)
def no_spark_context(monkeypatch):
    """Any SparkContext or RDD made, or a broadcast or parallelize asked for, fails the test. Other Spark Connect test
    modules import it (with ``mnist_frame``), and so run under it too."""
    import pyspark
    import pyspark.rdd

    def refuse(*args, **kwargs):
        raise AssertionError("a SparkContext or an RDD was used on a Spark Connect session")
    for name in ("__init__", "getOrCreate", "broadcast", "parallelize"):
        monkeypatch.setattr(pyspark.SparkContext, name, refuse)
    monkeypatch.setattr(pyspark.SparkContext, "_active_spark_context", None)
    monkeypatch.setattr(pyspark.rdd.RDD, "__init__", refuse)


def mnist_frame(session, mnist, rows, offset=0, partitions=3):
    from pyspark.ml.linalg import Vectors
    X, y = mnist.train.images[offset:offset + rows], mnist.train.labels[offset:offset + rows]
    data = [(Vectors.dense(x.reshape(-1).astype(float)), float(label)) for x, label in zip(X, y)]
    df = session.createDataFrame(data, ["features", "label"])
    return df.repartition(partitions) if partitions else df  # repartition: rows in no fixed order


def test_the_guard_catches_a_spark_context():
    import pyspark
    with pytest.raises(AssertionError, match="SparkContext or an RDD"):
        pyspark.SparkContext.getOrCreate()


def test_the_shards_are_cut_as_staging_cuts_them_one_per_partition(connect, mnist):
    from pyspark.sql import functions as F
    frame, rows = one_job.shard_frame(mnist_frame(connect, mnist, 101), "features", "label", 4)
    assert rows == 101
    got = frame.select(F.spark_partition_id().alias("p"), task_side.ROW).collect()
    for k, (a, b) in enumerate(sharding.shard_bounds(101, 4)):
        assert sorted(r[task_side.ROW] for r in got if r["p"] == k) == list(range(a, b))


def test_sync_with_a_backup_worker_refuses_the_always_slow_partitions_late_pushes(connect, mnist):
    slow = StragglerModel(delay=0.5, slow_partitions=(2,))  # a step takes some 40 ms here
    sgd = SyncSGD(connect, 2, backup_workers=1, batch_size=16, straggler=slow)
    result = sgd.fit_frame(mnist_frame(connect, mnist, 1920), max_steps=40)
    assert [h["step"] for h in result.history] == list(range(1, 41))
    assert all(h["examples"] == 32 and len(h["kept"]) == 2 and len(h["dropped"]) == 1 for h in result.history)
    assert sum(h["dropped"] == [2] for h in result.history) >= 30  # the slow shard's, but on a very slow step
    slow = [r for r in result.tasks if r.shard == 2]  # it gives up each version that closes while it sleeps
    assert sum(r.refused for r in slow) >= 10 and sum(r.pushes for r in slow) <= 10, slow


def test_the_estimator_fits_transforms_saves_and_loads_on_spark_connect(connect, mnist, tmp_path):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    train, test = mnist_frame(connect, mnist, 1920), mnist_frame(connect, mnist, 300, offset=5000, partitions=None)
    model = NetworkClassifier(workers=2, backupWorkers=1, batchSize=32, epochs=2, maxSteps=40, lr=0.02).fit(train)
    assert model.summary.mode == "sync" and len(model.summary.history) == 40
    predicted = model.transform(test).select("label", "prediction").collect()
    accuracy = np.mean([r["label"] == r["prediction"] for r in predicted])
    assert accuracy > 0.6, accuracy  # 40 steps of 64 images: far above chance (0.1)
    evaluated = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(model.transform(test))
    assert evaluated == pytest.approx(accuracy)
    model.write().save(str(tmp_path / "model"))
    loaded = NetworkClassificationModel.load(str(tmp_path / "model"))
    again = loaded.transform(test).select("prediction").collect()
    assert [r["prediction"] for r in again] == [r["prediction"] for r in predicted]
    for name, value in model.weights.items():
        np.testing.assert_array_equal(loaded.weights[name], value)


def test_the_estimator_trains_asynchronously_in_a_pipeline_on_spark_connect(connect, mnist):
    from pyspark.ml import Pipeline
    pipeline = Pipeline(stages=[NetworkClassifier(mode="async", workers=2, batchSize=16, maxSteps=30)])
    fitted = pipeline.fit(mnist_frame(connect, mnist, 480))
    assert fitted.transform(mnist_frame(connect, mnist, 50, partitions=None)).count() == 50
    summary = fitted.stages[0].summary
    assert summary.mode == "async" and len(summary.history) == 30
    assert summary.staleness["max"] is not None and summary.staleness["max"] >= 0


def test_a_bad_row_is_one_line_naming_it(connect, mnist):
    from pyspark.sql import functions as F
    df = mnist_frame(connect, mnist, 120)
    df = df.withColumn("label", F.when(F.col("label") == 7, F.lit(12.0)).otherwise(F.col("label")))
    with pytest.raises(DataError, match=r"^row \d+: column 'label' is outside 0\.\.9: 12\.0 \(example row: "
                                        r"label=12\.0, features="):
        SyncSGD(connect, 2, batch_size=16).fit_frame(df, max_steps=3)


def test_too_few_task_slots_is_one_line_naming_both_numbers(connect, mnist):
    with pytest.raises(ConfigError, match=r"needs 6 task slots at once .* only [0-5] started within 15 s"):
        SyncSGD(connect, 6, batch_size=16).fit_frame(mnist_frame(connect, mnist, 240), max_steps=3,
                                                      start_seconds=15)


def test_early_stopping_validates_in_the_client_and_stops(connect, mnist):
    from pyspark.sql import functions as F
    df = mnist_frame(connect, mnist, 240).withColumn("isVal", F.rand(seed=1) < 0.25)
    model = NetworkClassifier(workers=2, batchSize=16, lr=1e-9, validationIndicatorCol="isVal", epochs=10,
                              earlyStoppingPatience=2, earlyStoppingMetric="accuracy",
                              earlyStoppingMinDelta=0.01).fit(df)
    summary = model.summary  # lr ~ 0: the accuracy never improves by 0.01, so patience 2 ends it at epoch 3
    assert summary.stopped_early and summary.best_step == summary.validation[0]["step"]
    assert summary.stopped_step == summary.validation[2]["step"] == len(summary.history)


def test_a_resumed_fit_goes_on_to_the_straight_fits_parameters(connect, mnist, tmp_path):
    df = mnist_frame(connect, mnist, 480)
    settings = dict(workers=2, batchSize=16, seed=5, checkpointDir=str(tmp_path / "run"), checkpointInterval=3)
    NetworkClassifier(maxSteps=3, **settings).fit(df)
    resumed = NetworkClassifier(maxSteps=7, resume=True, **settings).fit(df)
    assert [h["step"] for h in resumed.summary.history] == [4, 5, 6, 7]
    straight = NetworkClassifier(maxSteps=7, **{**settings, "checkpointDir": str(tmp_path / "straight")}).fit(df)
    for name, value in straight.weights.items():
        np.testing.assert_array_equal(resumed.weights[name], value, err_msg=name)


def test_the_executors_are_probed_through_a_dataframe_job(connect):
    from mnist_lenet_spark import __version__
    from mnist_lenet_spark.cluster import probe
    report = probe.check_executors(connect)
    assert report["versions"]["mnist_lenet_spark"] == __version__ and not report["missing"]
    assert probe.check_executors(connect) is report  # once per session

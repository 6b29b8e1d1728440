"""The estimator as pyspark.ml's own classifiers behave: numClasses and numFeatures as ints, model selection with
CrossValidator and TrainValidationSplit, warm start (initialModel), resume (resume, checkpointDir), and the backup
and asynchronous settings as Params. local[2], a few hundred MNIST rows, a few steps per fit."""
import json
import math

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.tuning import CrossValidator, CrossValidatorModel, ParamGridBuilder, TrainValidationSplit

from mnist_lenet_spark.config import ConfigError
from mnist_lenet_spark.data import DataError
from mnist_lenet_spark.ml import LeNetClassificationModel, LeNetClassifier, NetworkClassifier


def rows_of(spark, images, labels, slices=2):
    rows = [(int(y), x.tobytes()) for x, y in zip(images, labels)]
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, slices), "label long, features binary")


@pytest.fixture(scope="module")
def train(spark, mnist):
    return rows_of(spark, mnist.train.images[:320], mnist.train.labels[:320])


@pytest.fixture(scope="module")
def trained(train, tmp_path_factory):
    """A LeNet trained to a loss far below its initial one (3.7), and the folder it is saved in."""
    model = LeNetClassifier(workers=2, batchSize=32, epochs=10, maxSteps=40, lr=0.02, seed=1).fit(train)
    path = tmp_path_factory.mktemp("trained") / "model"
    model.save(str(path))
    return model, str(path)


def test_num_classes_and_num_features_are_ints_on_a_fitted_a_copied_and_a_loaded_model(spark, mnist, tmp_path):
    df = rows_of(spark, mnist.train.images[:64], mnist.train.labels[:64] % 3)
    estimator = LeNetClassifier(numClasses=3, workers=1, batchSize=16, maxSteps=1)
    assert estimator.getNumClasses() == 3 and estimator.numClasses.name == "numClasses"  # the estimator's Param
    model = estimator.fit(df)
    assert (model.numClasses, model.numFeatures) == (3, 784) and type(model.numClasses) is int
    assert model.copy().numClasses == 3 and model.getNumClasses() == 3
    assert model.weights["fc2.W"].shape == (512, 3)
    model.save(str(tmp_path / "model"))
    metadata = json.loads(next((tmp_path / "model" / "metadata").glob("part-*")).read_text())
    assert metadata["paramMap"]["numClasses"] == 3  # where a model saved by an earlier version keeps it
    loaded = LeNetClassificationModel.load(str(tmp_path / "model"))
    assert (loaded.numClasses, loaded.numFeatures) == (3, 784)
    assert len(loaded.transform(df).first().probability) == 3
    pipeline = Pipeline(stages=[estimator]).fit(df)
    pipeline.write().overwrite().save(str(tmp_path / "pipeline"))
    assert PipelineModel.load(str(tmp_path / "pipeline")).stages[0].numClasses == 3
    estimator.save(str(tmp_path / "estimator"))
    assert LeNetClassifier.load(str(tmp_path / "estimator")).getNumClasses() == 3


def test_cross_validation_over_two_learning_rates_picks_the_one_that_learns(spark, train, tmp_path):
    clf = LeNetClassifier(workers=2, batchSize=16, epochs=10, maxSteps=20, seed=2)
    grid = ParamGridBuilder().addGrid(clf.lr, [1e-6, 0.02]).build()
    evaluator = MulticlassClassificationEvaluator(metricName="accuracy")
    cv = CrossValidator(estimator=clf, estimatorParamMaps=grid, evaluator=evaluator, numFolds=2, parallelism=1,
                        seed=5)
    cv_model = cv.fit(train)
    useless, good = cv_model.avgMetrics
    assert good > 0.45 and useless < 0.2
    best = cv_model.bestModel
    assert isinstance(best, LeNetClassificationModel) and best.getLr() == 0.02
    assert best.summary.history[0]["lr"] == 0.02  # the refit on every row used it
    assert clf.getLr() == 0.01  # the grid's values went to copies, not to the estimator
    cv_model.write().overwrite().save(str(tmp_path / "cv"))
    again = CrossValidatorModel.load(str(tmp_path / "cv"))
    assert again.avgMetrics == cv_model.avgMetrics and again.bestModel.numClasses == 10
    assert [r.prediction for r in again.transform(train).limit(20).collect()] == \
        [r.prediction for r in cv_model.transform(train).limit(20).collect()]


def test_train_validation_split_over_batch_size_and_backup_workers(spark, train):
    clf = LeNetClassifier(workers=2, maxSteps=2, seed=2)
    grid = (ParamGridBuilder().addGrid(clf.lr, [0.05]).addGrid(clf.batchSize, [8, 16])
            .addGrid(clf.backupWorkers, [0, 1]).build())
    tvs = TrainValidationSplit(estimator=clf, estimatorParamMaps=grid, trainRatio=0.75, parallelism=1,
                               collectSubModels=True, seed=1,
                               evaluator=MulticlassClassificationEvaluator(metricName="accuracy"))
    model = tvs.fit(train)
    assert len(model.validationMetrics) == 4 and all(0 <= m <= 1 for m in model.validationMetrics)
    fitted = [(m.getBatchSize(), m.getBackupWorkers(), m.summary.history[0]["examples"],
               len(m.summary.history[0].get("dropped", [])), m.summary.history[0]["lr"]) for m in model.subModels]
    assert sorted(fitted) == [(8, 0, 16, 0, 0.05), (8, 1, 16, 1, 0.05), (16, 0, 32, 0, 0.05), (16, 1, 32, 1, 0.05)]


def test_copy_with_a_param_map_changes_the_copy_only():
    clf = NetworkClassifier(lr=0.02)
    copy = clf.copy({clf.lr: 0.5, clf.backupWorkers: 2})
    assert (copy.getLr(), copy.getBackupWorkers(), copy.uid) == (0.5, 2, clf.uid)
    assert (clf.getLr(), clf.getBackupWorkers()) == (0.02, 0)
    assert copy.extractParamMap()[copy.lr] == 0.5


def test_a_warm_start_begins_at_the_saved_models_weights_and_loss(train, trained):
    model, path = trained
    trained_loss = np.mean([h["loss"] for h in model.summary.history[-5:]])
    assert trained_loss < 1.0
    warm = LeNetClassifier(workers=2, batchSize=32, maxSteps=1, lr=1e-7, seed=4, initialModel=path).fit(train)
    assert warm.getInitialModel() == path
    for name, value in model.weights.items():
        np.testing.assert_allclose(warm.weights[name], value, atol=1e-5, err_msg=name)
    first = warm.summary.history[0]["loss"]
    assert first < 1.2 and abs(first - trained_loss) < 0.4
    cold = LeNetClassifier(workers=2, batchSize=32, maxSteps=1, lr=1e-7, seed=4).fit(train)
    assert cold.summary.history[0]["loss"] > math.log(10)  # chance, or worse: a fresh network's


def test_an_asynchronous_fit_warm_starts_too(train, trained):
    model, path = trained
    warm = LeNetClassifier(mode="async", workers=2, batchSize=32, maxSteps=2, lr=1e-7, initialModel=path).fit(train)
    assert warm.summary.history[0]["loss"] < 1.2
    np.testing.assert_allclose(warm.weights["fc2.W"], model.weights["fc2.W"], atol=1e-5)


def test_a_warm_start_from_another_network_or_no_model_is_one_line(spark, train, trained, tmp_path):
    _, path = trained
    with pytest.raises(ConfigError) as e:
        NetworkClassifier(model="resnet", maxSteps=1, initialModel=path).fit(train)
    message = str(e.value)
    assert message.startswith(f"initialModel {path}: its weights are not this network's (") and "\n" not in message
    with pytest.raises(DataError, match=f"^{tmp_path / 'none'}: not a saved model"):
        LeNetClassifier(maxSteps=1, initialModel=str(tmp_path / "none")).fit(train)
    with pytest.raises(ConfigError, match="^initialModel .* and resume: give one"):
        LeNetClassifier(maxSteps=1, initialModel=path, resume=True, checkpointDir=str(tmp_path)).fit(train)


def test_resume_goes_on_from_the_checkpoint_as_an_uninterrupted_fit_would(train, tmp_path):
    options = {"workers": 2, "batchSize": 16, "seed": 3, "checkpointDir": str(tmp_path / "ck")}
    LeNetClassifier(maxSteps=3, **options).fit(train)
    resumed = LeNetClassifier(maxSteps=6, resume=True, **options).fit(train)
    assert [h["step"] for h in resumed.summary.history] == [4, 5, 6]
    straight = LeNetClassifier(maxSteps=6, **{**options, "checkpointDir": ""}).fit(train)
    for name, value in straight.weights.items():
        np.testing.assert_allclose(resumed.weights[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
    checkpoint = tmp_path / "ck" / "checkpoint.npz"
    with pytest.raises(ConfigError) as e:
        LeNetClassifier(maxSteps=8, resume=True, **{**options, "batchSize": 8}).fit(train)
    assert str(e.value) == f"{checkpoint}: written with batchSize 16, resumed with 8"
    with pytest.raises(ConfigError) as e:
        LeNetClassifier(maxSteps=8, resume=True, mode="async", **options).fit(train)
    assert str(e.value).startswith(f"{checkpoint}: written with mode sync, resumed with mode async")
    with pytest.raises(ConfigError, match="^resume: needs checkpointDir"):
        LeNetClassifier(maxSteps=8, resume=True).fit(train)


def test_the_backup_mode_and_combine_reach_the_trainer(train, monkeypatch):
    from mnist_lenet_spark import spark as msp
    seen = []

    class Recording(msp.BackupStep):
        def __init__(self, sc, ctx, source, workers, backup, *args, **kwargs):
            seen.append(backup)
            super().__init__(sc, ctx, source, workers, backup, *args, **kwargs)

    monkeypatch.setattr(msp, "BackupStep", Recording)
    model = LeNetClassifier(workers=2, backupWorkers=1, backupMode="wait-all", backupCombine="executors",
                            batchSize=8, maxSteps=2).fit(train)
    assert [(b.workers, b.mode, b.combine) for b in seen] == [(1, "wait-all", "executors")]
    assert [len(h["kept"]) for h in model.summary.history] == [2, 2]
    assert (model.getBackupMode(), model.getBackupCombine()) == ("wait-all", "executors")


@pytest.mark.parametrize("params,message", [
    ({"backupMode": "all"}, "backupMode: must be 'cancel' or 'wait-all', got 'all'"),
    ({"backupCombine": "workers"}, "backupCombine: must be 'driver' or 'executors', got 'workers'"),
    ({"mode": "async", "backupCombine": "executors"}, "backupCombine 'executors': the asynchronous mode "
                                                      "(mode async) has no backup workers; leave it 'driver'"),
    ({"mode": "async", "backupMode": "wait-all"}, "backupMode 'wait-all': the asynchronous mode"),
    ({"maxStaleness": 2}, "maxStaleness 2: only the asynchronous mode (mode async) has stale gradients"),
    ({"mode": "async", "maxStaleness": -1}, "maxStaleness: must be an integer >= 0 or None, got -1"),
])
def test_backup_and_staleness_params_the_mode_has_no_use_for_are_refused(train, params, message):
    with pytest.raises(ConfigError) as e:
        LeNetClassifier(maxSteps=1, **params).fit(train)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_max_staleness_reaches_the_asynchronous_mode(train):
    model = LeNetClassifier(mode="async", workers=2, batchSize=16, maxSteps=6, maxStaleness=0).fit(train)
    assert model.getMaxStaleness() == 0
    assert len(model.summary.history) == 6 and model.summary.staleness["max"] == 0

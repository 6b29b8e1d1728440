"""The Spark ML estimator and model over DataFrames, and the DataFrame readers, on local[2]."""
import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.linalg import Vectors

from mnist_lenet_spark import data, readers
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.config import SGDConfig
from mnist_lenet_spark.data import DataError
from mnist_lenet_spark.ml import LeNetClassificationModel, LeNetClassifier, NetworkClassificationModel, NetworkClassifier
from tests.conftest import ROOT


def binary_rows(spark, images, labels, slices=3):
    rows = [(int(label), image.tobytes()) for image, label in zip(images, labels)]
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, slices), "label long, features binary")


@pytest.fixture(scope="module")
def small(spark, mnist):
    images, labels = mnist.train.images[:300], mnist.train.labels[:300]
    return images, labels, binary_rows(spark, images, labels)


@pytest.fixture(scope="module")
def fitted(small):
    return LeNetClassifier(workers=2, batchSize=16, maxSteps=6, seed=3).fit(small[2])


def test_fit_on_a_dataframe_equals_syncsgd_on_the_same_arrays(spark, small, fitted):
    images, labels, _ = small
    arrays = msp.SyncSGD(spark, 2, batch_size=16, seed=3).fit(images, labels, max_steps=6)
    assert [h["loss"] for h in fitted.summary.history] == pytest.approx([h["loss"] for h in arrays.history], rel=1e-6)
    for k, v in arrays.params.items():
        np.testing.assert_allclose(fitted.weights[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    assert all(len(h["kept"]) == 2 for h in fitted.summary.history)  # the default engine: one-job


@pytest.mark.parametrize("kind", ["vector", "sparse vector", "array", "binary"])
def test_every_feature_type_through_parquet_transform_and_an_evaluator(spark, small, fitted, tmp_path, kind):
    """Parquet keeps a VectorAssembler's Vector column as a UDT; the evaluator then plans the UDF over a
    columnar scan. Predictions equal the driver's, even in a session where Spark's columnar UDF input is on."""
    from mnist_lenet_spark.ml import COLUMNAR_UDF_INPUT
    images, labels, _ = small
    images, labels = images[:40], labels[:40]
    flat = [img.reshape(-1).astype(float) for img in images]
    features = {"vector": [Vectors.dense(x) for x in flat],
                "sparse vector": [Vectors.sparse(784, {int(i): x[i] for i in np.flatnonzero(x)}) for x in flat],
                "array": [x.tolist() for x in flat], "binary": [img.tobytes() for img in images]}[kind]
    path = str(tmp_path / "rows.parquet")
    spark.createDataFrame(list(zip([float(y) for y in labels], features)), ["label", "features"]).write.parquet(path)
    spark.conf.set(COLUMNAR_UDF_INPUT, "true")  # Spark's own default
    try:
        out = fitted.transform(spark.read.parquet(path))
        accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(out)
    finally:
        spark.conf.set(COLUMNAR_UDF_INPUT, "false")
    expected = fitted.predict(images)
    assert accuracy == pytest.approx(float(np.mean(expected == labels)))
    predicted = {float(r["label"]) for r in out.select("label").collect()}
    assert predicted == {float(y) for y in labels}
    assert sorted(r["prediction"] for r in out.collect()) == sorted(float(p) for p in expected)


def test_defaults_come_from_sgd_config():
    clf = LeNetClassifier()
    sgd = SGDConfig()
    assert (clf.getBatchSize(), clf.getLr(), clf.getMomentum(), clf.getLrDecay(), clf.getL2(), clf.getSeed()) == \
        (sgd.batch_size, sgd.lr, sgd.momentum, sgd.lr_decay, sgd.l2, sgd.seed)
    assert clf.setLr(0.5).getLr() == 0.5 and clf.getFeaturesCol() == "features"


def test_vector_array_and_binary_features_train_alike(spark, small):
    images, labels, binary = small
    flat = [img.reshape(-1).astype(float) for img in images[:100]]
    vectors = spark.createDataFrame([(int(y), Vectors.dense(x)) for x, y in zip(flat, labels)], ["label", "features"])
    arrays = spark.createDataFrame([(float(y), x.tolist()) for x, y in zip(flat, labels)], ["label", "features"])
    clf = LeNetClassifier(batchSize=8, maxSteps=2, seed=1)
    reference = clf.fit(binary.limit(100)).weights
    for df in (vectors, arrays):
        weights = clf.fit(df).weights
        assert all(np.array_equal(weights[k], reference[k]) for k in reference)


def test_transform_adds_prediction_columns_for_the_evaluator(small, fitted):
    images, labels, df = small
    out = fitted.transform(df)
    assert [f.name for f in out.schema.fields] == ["label", "features", "prediction", "probability", "rawPrediction"]
    rows = out.select("prediction", "probability", "rawPrediction").collect()
    predicted = np.array([r.prediction for r in rows])
    assert np.array_equal(predicted, fitted.predict(images))  # executors agree with the driver
    assert all(abs(sum(r.probability) - 1) < 1e-5 for r in rows)
    assert np.allclose([np.exp(r.rawPrediction.toArray()) for r in rows[:5]],
                       [r.probability.toArray() for r in rows[:5]], atol=1e-6)
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(out)
    assert accuracy == pytest.approx(np.mean(predicted == labels))


def test_saved_model_and_pipeline_load_and_predict_exactly_as_before(spark, small, fitted, tmp_path):
    _, _, df = small
    fitted.save(str(tmp_path / "model"))
    loaded = LeNetClassificationModel.load(str(tmp_path / "model"))
    assert loaded.uid == fitted.uid and loaded.getBatchSize() == 16 and not loaded.hasSummary
    assert all(np.array_equal(loaded.weights[k], v) for k, v in fitted.weights.items())
    before = [r.probability for r in fitted.transform(df).select("probability").collect()]
    assert [r.probability for r in loaded.transform(df).select("probability").collect()] == before
    pipeline = Pipeline(stages=[LeNetClassifier(batchSize=8, maxSteps=2)]).fit(df)
    pipeline.write().overwrite().save(str(tmp_path / "pipeline"))
    again = PipelineModel.load(str(tmp_path / "pipeline"))
    assert isinstance(again.stages[0], LeNetClassificationModel)
    assert again.transform(df).select("prediction").collect() == pipeline.transform(df).select("prediction").collect()


def test_a_lenet_saved_with_the_earlier_weight_names_loads_and_predicts_the_same(spark, small, fitted, tmp_path):
    _, _, df = small
    legacy = dict(zip(["W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4"], fitted.weights.values()))
    old = fitted.copy()
    old.weights = legacy  # what an earlier version wrote: the same arrays under W1 .. b4
    old.write().overwrite().save(str(tmp_path / "old"))
    loaded = LeNetClassificationModel.load(str(tmp_path / "old"))
    assert list(loaded.weights) == list(fitted.weights)
    assert [r.probability for r in loaded.transform(df).select("probability").collect()] == \
        [r.probability for r in fitted.transform(df).select("probability").collect()]


def test_validation_indicator_rows_are_held_out(spark, small):
    images, labels, df = small
    flagged = readers.with_validation_flag(spark, df, 100)
    model = LeNetClassifier(batchSize=25, epochs=1, validationIndicatorCol="is_validation").fit(flagged)
    assert sum(h["examples"] for h in model.summary.history) == 200  # one epoch over the 200 training rows
    assert len(model.summary.validation) == 1 and 0 <= model.summary.validation[0]["accuracy"] <= 1


@pytest.mark.parametrize("rows,schema,message", [
    ([(1, b"\x00" * 783)], "label long, features binary", "row 0: column 'features' has 783 bytes, expected 784"),
    ([(1, [300.0] * 784)], "label long, features array<double>",
     "row 0: column 'features' has values outside 0..255"),
    ([(1, None)], "label long, features binary", "row 0: column 'features' is null"),
    ([(10, b"\x00" * 784)], "label long, features binary", "row 0: column 'label' is outside 0..9: 10"),
    ([(2.5, b"\x00" * 784)], "label double, features binary", "row 0: column 'label' is not a whole number: 2.5"),
    ([(1, "x")], "label long, features string", "column 'features' (features) has type string"),
    ([(1, b"\x00" * 784)], "y long, features binary", "column 'label' (label) not found"),
])
def test_bad_rows_and_columns_are_one_clear_error_on_the_driver(spark, rows, schema, message):
    with pytest.raises(DataError) as e:
        LeNetClassifier(workers=1, batchSize=1, maxSteps=1).fit(spark.createDataFrame(rows, schema))
    first_line = str(e.value).splitlines()[0]
    assert message in first_line
    if message.startswith("row"):
        assert "(example row: label=" in first_line


def test_read_mnist_from_idx_and_csv_matches_the_numpy_reader(spark, mnist, tmp_path):
    test = readers.read_mnist(spark, str(ROOT / "data" / "mnist"), split="test").collect()
    assert len(test) == 10000
    assert np.array_equal([r.label for r in test], mnist.test.labels)
    assert np.array_equal(np.frombuffer(b"".join(r.features for r in test), np.uint8).reshape(-1, 28, 28),
                          mnist.test.images)
    lines = [",".join(map(str, [y, *x.reshape(-1)])) for x, y in zip(mnist.test.images[:4], mnist.test.labels[:4])]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    rows = readers.read_mnist(spark, str(tmp_path / "m.csv"), format="csv").collect()
    assert [r.label for r in rows] == list(mnist.test.labels[:4])
    assert rows[3].features == mnist.test.images[3].tobytes()
    (tmp_path / "bad.csv").write_text(lines[0] + "\n3,1,2\n")
    with pytest.raises(DataError, match="bad.csv: a line is not label"):
        readers.read_mnist(spark, str(tmp_path / "bad.csv"), format="csv")
    with pytest.raises(DataError, match="expected one file t10k-images-idx3-ubyte"):
        readers.read_mnist(spark, str(tmp_path), split="test")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 8)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(data.gunzip(
        (ROOT / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes(), "labels"))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: truncated header"):
        readers.read_mnist(spark, str(tmp_path), split="test")


def test_the_estimator_saves_and_loads_its_params(spark, tmp_path):  # MLlib writers need an active session
    clf = LeNetClassifier(workers=3, backupWorkers=1, lr=0.02, lrScaling="linear", validationIndicatorCol="v")
    clf.save(str(tmp_path / "clf"))
    loaded = LeNetClassifier.load(str(tmp_path / "clf"))
    assert loaded.uid == clf.uid
    assert (loaded.getWorkers(), loaded.getBackupWorkers(), loaded.getLr(), loaded.getLrScaling(),
            loaded.getValidationIndicatorCol(), loaded.getBatchSize()) == (3, 1, 0.02, "linear", "v", 64)


def test_checkpoint_dir_gets_the_final_state(small, tmp_path):
    from mnist_lenet_spark.loop import checkpoint
    model = LeNetClassifier(batchSize=16, maxSteps=3, checkpointDir=str(tmp_path)).fit(small[2])
    state, meta = checkpoint.load_checkpoint(tmp_path / "checkpoint.npz")
    assert state.step == 3 and meta["config"]["batch_size"] == 16
    assert np.array_equal(state.params[:10], model.weights["conv1.W"].reshape(-1)[:10])


def test_the_resnet_by_name_fits_transforms_saves_and_loads(spark, small, tmp_path):
    """model="resnet": the DataFrame fit equals SyncSGD's on the same arrays (running statistics included), the
    saved model keeps its name, and transform and predict use the running statistics."""
    from mnist_lenet_spark import models
    images, labels, df = small
    fitted = NetworkClassifier(model="resnet", workers=2, batchSize=8, maxSteps=3, seed=3).fit(df)
    arrays = msp.SyncSGD(spark, 2, batch_size=8, seed=3, model=models.network_from("resnet")).fit(images, labels, max_steps=3)
    assert "block3.conv2.bn.running_var" in fitted.weights
    for k, v in arrays.params.items():
        np.testing.assert_allclose(fitted.weights[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    fitted.write().overwrite().save(str(tmp_path / "resnet"))
    loaded = NetworkClassificationModel.load(str(tmp_path / "resnet"))
    assert loaded.getModel() == "resnet"
    rows = loaded.transform(df).select("prediction").collect()  # in the rows' order
    assert [r.prediction for r in rows] == fitted.predict(images).tolist()
    with pytest.raises(Exception, match="model: unknown model 'vgg'"):
        NetworkClassifier(model="vgg", maxSteps=1).fit(df)
    with pytest.raises(Exception, match="model: LeNetClassifier trains LeNet, not 'resnet': use NetworkClassifier"):
        LeNetClassifier(model="resnet", maxSteps=1).fit(df)


def colour_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic 3-channel 32 x 32 uint8 images (n, 3, 32, 32) of 3 classes: class c is a bright square in
    channel c at a random place, over noise in every channel."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.integers(0, 90, (n, 3, 32, 32)).astype(np.uint8)
    for image, label, (r, c) in zip(images, labels, rng.integers(0, 20, (n, 2))):
        image[label, r:r + 12, c:c + 12] = 230
    return images, labels


def test_a_resnet_on_3_channel_32x32_images_of_3_classes_fits_from_parquet_end_to_end(spark, tmp_path):
    """The image shape and class count come from the estimator's Params, not MNIST: staging, the shard files,
    validation, transform, an evaluator and predict all take 3 x 32 x 32 images (Vectors through Parquet)."""
    images, labels = colour_images(360, seed=1)
    rows = [(int(y), Vectors.dense(x.reshape(-1).astype(float)), i % 6 == 0) for i, (x, y) in
            enumerate(zip(images, labels))]  # every 6th row validates
    spark.createDataFrame(rows, ["label", "features", "is_val"]).write.parquet(str(tmp_path / "rows"))
    df = spark.read.parquet(str(tmp_path / "rows"))
    estimator = NetworkClassifier(model="resnet", imageShape=[3, 32, 32], numClasses=3, workers=2, batchSize=16,
                                epochs=3, lr=0.05, validationIndicatorCol="is_val", seed=2)
    model = estimator.fit(df)
    assert model.weights["stem.W"].shape == (16, 3, 3, 3) and model.weights["fc.W"].shape == (64, 3)
    assert model.summary.validation and model.summary.validation[-1]["accuracy"] >= 0.9
    test_images, test_labels = colour_images(120, seed=7)
    test_df = spark.createDataFrame([(int(y), Vectors.dense(x.reshape(-1).astype(float)))
                                     for x, y in zip(test_images, test_labels)], ["label", "features"])
    out = model.transform(test_df)
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(out)
    assert accuracy >= 0.9
    assert len(out.first().probability) == 3
    predicted = [r.prediction for r in out.select("prediction").collect()]
    assert predicted == model.predict(test_images).tolist()  # (n, 3, 32, 32) arrays on the driver: the same
    with pytest.raises(Exception, match="has 784 values, expected 3072"):  # MNIST rows for this model
        model.transform(spark.createDataFrame([(1, Vectors.dense(np.zeros(784)))], ["label", "features"])
                        ).collect()
    with pytest.raises(Exception, match="model: lenet cannot take 3x30x30 images: "):  # its pools halve twice
        LeNetClassifier(imageShape=[3, 30, 30], numClasses=3, maxSteps=1).fit(df)


def test_features_scaled_to_0_1_train_like_bytes_with_pixel_range_0_1_and_are_refused_without(spark, small):
    images, labels, binary = small
    scaled = spark.createDataFrame([(int(y), Vectors.dense(img.reshape(-1) / 255.0))
                                    for img, y in zip(images[:100], labels)], ["label", "features"])
    # the one-job engine names the first bad row a task reports: each shard's task checks its own rows
    with pytest.raises(DataError, match=r"row \d+: column 'features' has a value that is not a whole number .*"
                                        r"need pixelRange '0..1'"):
        LeNetClassifier(batchSize=8, maxSteps=1).fit(scaled)
    reference = LeNetClassifier(batchSize=8, maxSteps=2, seed=1).fit(binary.limit(100))
    model = LeNetClassifier(batchSize=8, maxSteps=2, seed=1, pixelRange="0..1").fit(scaled)
    assert all(np.array_equal(model.weights[k], reference.weights[k]) for k in reference.weights)
    assert model.getPixelRange() == "0..1"  # and transform reads the same scale
    assert [r.prediction for r in model.transform(scaled).collect()] == \
        [float(p) for p in reference.predict(images[:100])]


def test_a_data_set_of_only_0_and_1_pixels_declared_0_255_is_refused(spark, small):
    images, labels, _ = small
    binarized = [(int(y), (img.reshape(-1) > 127).astype(float).tolist()) for img, y in zip(images[:50], labels)]
    df = spark.createDataFrame(binarized, "label long, features array<double>")
    with pytest.raises(DataError, match=r"column 'features': every pixel of the 25 rows of a shard is 0 or 1 out of "
                                        r"0..255"):
        LeNetClassifier(batchSize=8, maxSteps=1).fit(df)
    model = LeNetClassifier(batchSize=8, maxSteps=1, pixelRange="0..1").fit(df)  # declared: they are 0 and 255
    assert model.summary.history[0]["examples"] == 8 * 2


def test_an_unknown_pixel_range_is_one_line(spark, small):
    from mnist_lenet_spark.config import ConfigError
    with pytest.raises(ConfigError, match="pixelRange: pixel range must be one of 0..255, 0..1, got '1'"):
        LeNetClassifier(pixelRange="1").fit(small[2])


COMPOSED = {"input_shape": [1, 28, 28], "layers": [
    {"type": "conv2d", "name": "conv", "filters": 8, "kernel": 3, "stride": 2, "padding": 1, "bias": False},
    {"type": "batch_norm", "name": "bn"}, {"type": "relu"},
    {"type": "residual", "name": "block", "branch": [
        {"type": "conv2d", "filters": 8, "kernel": 3, "padding": 1}, {"type": "batch_norm"}, {"type": "relu"}]},
    {"type": "max_pool", "size": 2}, {"type": "flatten"}, {"type": "dense", "units": 32}, {"type": "relu"},
    {"type": "dropout", "rate": 0.25}, {"type": "dense", "name": "out", "units": 10}]}


def test_a_composed_network_fits_from_a_dataframe_as_one_process_and_loads_in_a_fresh_process(spark, small,
                                                                                             tmp_path):
    """A network given as a JSON definition: the DataFrame fit (2 workers) equals the single-process trainer on
    the same arrays and 2 shards (batch norm's running statistics and dropout included); the saved model carries
    the definition, and a fresh Python process without this test's code loads it and predicts the same."""
    import json
    import subprocess
    import sys
    from mnist_lenet_spark.local import fit_local
    from mnist_lenet_spark.nn.network import Network
    images, labels, df = small
    text = json.dumps(COMPOSED)
    fitted = NetworkClassifier(model=text, workers=2, batchSize=8, maxSteps=3, seed=3).fit(df)
    local = fit_local(images, labels, SGDConfig(batch_size=8, seed=3, max_steps=3), model=Network(COMPOSED), shards=2)
    assert "bn.running_var" in fitted.weights and fitted.getNumClasses() == 10
    for k, v in local.params.items():
        np.testing.assert_allclose(fitted.weights[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    assert "total parameters:" in fitted.networkSummary()
    path = tmp_path / "composed"
    fitted.write().overwrite().save(str(path))
    np.save(tmp_path / "images.npy", images[:50])
    code = f"""
import numpy as np
from mnist_lenet_spark import session
from mnist_lenet_spark.ml import NetworkClassificationModel
spark = session.session("local[1]", conf={{"spark.ui.enabled": "false"}})
model = NetworkClassificationModel.load({str(path)!r})
print(model.predict(np.load({str(tmp_path / 'images.npy')!r})).tolist())
spark.stop()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == fitted.predict(images[:50]).tolist()


def test_the_confusion_matrix_has_a_row_and_column_for_every_class(spark):
    df = spark.createDataFrame([(11, 11.0), (11, 2.0), (0, 0.0), (3, 11.0)], "label long, prediction double")
    matrix = readers.confusion_matrix(df, classes=12)
    assert matrix.shape == (12, 12) and matrix.sum() == 4 and matrix[11, 11] == matrix[11, 2] == matrix[3, 11] == 1
    assert readers.confusion_matrix(df, classes=10).shape == (12, 12)  # a label past the classes gets its row


def test_a_validation_fraction_marks_rows_evenly_and_the_same_for_a_seed(spark):
    df = spark.createDataFrame(spark.sparkContext.parallelize([(i,) for i in range(1000)], 4), "i long")
    flags = [r.is_validation for r in readers.with_validation_fraction(spark, df, 0.1, seed=3).orderBy("i").collect()]
    assert sum(flags) in range(98, 103) and all(sum(flags[a:a + 100]) in range(8, 13) for a in range(0, 1000, 100))
    again = spark.createDataFrame(spark.sparkContext.parallelize([(i,) for i in range(1000)], 7), "i long")
    assert [r.is_validation for r in readers.with_validation_fraction(spark, again, 0.1, seed=3).orderBy("i")
            .collect()] == flags
    assert [r.is_validation for r in readers.with_validation_fraction(spark, df, 0.1, seed=4).orderBy("i")
            .collect()] != flags

"""The array path reads pixels as declared, never guesses: uint8 arrays are pixels 0..255, numbers of another dtype
need a declared pixel range ('0..255' or '0..1') and are read exactly (refused, never rounded, off the 8-bit grid);
the fitted model and the MLflow model read them as they were trained to."""
import json

import numpy as np
import pytest

from mnist_lenet_spark import data, models
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.async_sgd import AsyncSGD
from mnist_lenet_spark.config import ConfigError, SGDConfig
from mnist_lenet_spark.executor import rows
from mnist_lenet_spark.local import fit_local

LENET = models.network_from("lenet")


@pytest.fixture(scope="module")
def small(mnist):
    return mnist.train.images[:256], mnist.train.labels[:256]


def test_uint8_pixels_are_taken_as_they_are_and_numbers_only_in_a_declared_range(small):
    images, _ = small
    np.testing.assert_array_equal(rows.model_pixels(LENET, images, "X"), images)
    np.testing.assert_array_equal(rows.model_pixels(LENET, images, "X", "0..1"), images)  # uint8: the dtype says
    scaled = images.astype(np.float32) / np.float32(255)  # (N, 28, 28) in [0, 1]
    np.testing.assert_array_equal(rows.model_pixels(LENET, scaled, "X", "0..1"), images)
    np.testing.assert_array_equal(rows.model_pixels(LENET, images.astype(np.float64), "X", "0..255"), images)
    np.testing.assert_array_equal(rows.model_pixels(LENET, images.astype(np.int64), "X", "0..255"), images)


@pytest.mark.parametrize("values,pixel_range,message", [
    (np.full((2, 784), 0.5, np.float32), None,
     "X_train: has dtype float32 with values from 0.5 to 0.5: give uint8 pixels 0..255, or declare the range, "
     "pixel_range='0..255' or pixel_range='0..1'"),
    (np.arange(2 * 784).reshape(2, 784) % 256, None, "X_train: has dtype int64 with values from 0 to 255"),
    (np.full((2, 784), 0.5), "0..255", "X_train: has a value that is not a whole number (0.5 at position (0, 0)); "
                                       "pixels scaled to 0..1 need pixel_range='0..1'"),
    (np.full((2, 784), 0.3), "0..1", "X_train: has a value that is not a multiple of 1/255 (0.3 at position (0, 0))"),
    (np.full((2, 784), 200.0), "0..1", "X_train: has values outside 0..1 (min 200.0, max 200.0) (pixels 0..255 "
                                       "need pixel_range='0..255')"),
    (np.full((2, 784), np.nan), "0..255", "X_train: has values outside 0..255 (NaN or infinity)"),
    (np.full((2, 784), True), "0..255", "X_train: has dtype bool"),
    (np.zeros((2, 784)), "0..100", "pixel_range: must be one of 0..255, 0..1 or None, got '0..100'"),
    (np.zeros((2, 783), np.uint8), None, "X_train: shape (2, 783), expected (N, ...) of 784 pixels each"),
])
def test_pixels_the_model_cannot_read_exactly_are_one_line_naming_the_argument(values, pixel_range, message):
    with pytest.raises(ConfigError) as e:
        rows.model_pixels(LENET, values, "X_train", pixel_range)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_scale_batch_takes_only_uint8():
    with pytest.raises(TypeError, match="scale_batch takes uint8 pixels 0..255, got float32"):
        data.scale_batch(np.zeros((1, 28, 28), np.float32))


def test_fit_local_refuses_undeclared_floats_and_reads_declared_ones_exactly(small):
    images, labels = small
    config = SGDConfig(batch_size=16, max_steps=2, seed=3)
    with pytest.raises(ConfigError, match="train_images: has dtype float64 with values from 0.0 to 1.0"):
        fit_local(images / 255.0, labels, config)
    reference = fit_local(images, labels, config)
    declared = fit_local(images / 255.0, labels, config, pixel_range="0..1")
    np.testing.assert_array_equal(declared.state.params, reference.state.params)


def test_sync_and_async_fits_refuse_scaled_floats_without_a_range_and_train_the_same_with_one(spark, mnist, small):
    """Floats in [0, 1], the commonest preprocessing, once ended at chance without a word: now refused; declared
    '0..1', they train exactly as the same images as uint8 (the same parameters, so the same accuracy)."""
    images, labels = small
    scaled = images.astype(np.float32) / np.float32(255)
    sgd = msp.SyncSGD(spark, workers=2, batch_size=16, seed=5)
    with pytest.raises(ConfigError, match=r"^X_train: has dtype float32 with values from 0.0 to 1.0: give uint8"):
        sgd.fit(scaled, labels, max_steps=3)
    with pytest.raises(ConfigError, match="^validation_data images: has dtype float32"):
        sgd.fit(images, labels, max_steps=3, validation_data=(scaled[:32], labels[:32]))
    with pytest.raises(ConfigError, match="^X_train: has dtype float32"):
        AsyncSGD(spark, workers=2, batch_size=16).fit(scaled, labels, max_steps=3)
    reference = sgd.fit(images, labels, max_steps=3)
    declared = sgd.fit(scaled, labels, max_steps=3, pixel_range="0..1",
                       validation_data=(scaled[:64], labels[:64]))
    np.testing.assert_array_equal(declared.state.params, reference.state.params)
    test_images, test_labels = mnist.test.images[:200], mnist.test.labels[:200]
    params = reference.params
    with pytest.raises(ConfigError, match="^images: has dtype float64"):
        sgd.accuracy(params, test_images / 255.0, test_labels)
    assert sgd.accuracy(params, test_images / 255.0, test_labels, pixel_range="0..1") == \
        sgd.accuracy(params, test_images, test_labels)
    np.testing.assert_array_equal(sgd.predict(params, test_images.astype(np.float64), pixel_range="0..255"),
                                  sgd.predict(params, test_images))


def test_a_fitted_model_reads_arrays_as_it_was_trained_to(mnist):
    from mnist_lenet_spark.ml import NetworkClassificationModel
    weights = LENET.init_params(0)
    images = mnist.test.images[:50]
    model = NetworkClassificationModel(weights)  # pixelRange '0..255' (the default contract)
    expected = model.predictProbability(images)
    np.testing.assert_array_equal(model.predictProbability(images.astype(np.float32)), expected)
    with pytest.raises(ConfigError, match=r"^images: has a value that is not a whole number .* need "
                                          r"pixel_range='0..1'"):
        model.predict(images / 255.0)
    np.testing.assert_array_equal(model.predictProbability(images / 255.0, pixelRange="0..1"), expected)
    model.setPixelRange("0..1")  # trained on 0..1 features: reads floats so, and uint8 as pixels 0..255
    np.testing.assert_array_equal(model.predictProbability(images / 255.0), expected)
    np.testing.assert_array_equal(model.predictProbability(images), expected)


class _Context:
    def __init__(self, artifacts):
        self.artifacts = artifacts


def test_the_mlflow_model_carries_and_applies_its_training_pixel_range(mnist, tmp_path):
    pytest.importorskip("mlflow")
    from mnist_lenet_spark import mlflow_model
    weights = LENET.init_params(1)
    np.savez(tmp_path / "weights.npz", **weights)
    (tmp_path / "network.json").write_text(json.dumps(LENET.to_json()))
    (tmp_path / "input.json").write_text(json.dumps({"pixel_range": "0..1"}))
    artifacts = {"weights": str(tmp_path / "weights.npz"), "network": str(tmp_path / "network.json")}
    images = mnist.test.images[:20]
    model = mlflow_model.NetworkModel()
    model.load_context(_Context({**artifacts, "input": str(tmp_path / "input.json")}))  # trained on 0..1
    expected = model.predict(None, images)  # uint8: pixels 0..255 whatever the contract
    assert model.predict(None, images.reshape(20, -1) / 255.0).equals(expected)
    with pytest.raises(ValueError, match=r"model input: has values outside 0..1 \(min 0.0, max 255.0\) \(pixels "
                                         r"0..255 need a model trained with pixelRange '0..255' \(this one: '0..1'\)"):
        model.predict(None, images.astype(np.float64))
    old = mlflow_model.NetworkModel()
    old.load_context(_Context(artifacts))  # logged before the contract was kept: 0..255
    assert old.predict(None, images.astype(np.float64)).equals(expected)
    with pytest.raises(ValueError, match="model input: has a value that is not a whole number"):
        old.predict(None, images / 255.0)

"""Keras models' to_json() (Keras 3, made here with Keras on the PyTorch backend; Keras 2, files made with tf-keras)
as networks: the layers, the shapes, the parameter counts, and one-line refusals."""
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402
from keras import layers  # noqa: E402

from mnist_lenet_spark.nn.keras import KerasError, definition_from_keras  # noqa: E402
from mnist_lenet_spark.nn.network import Network  # noqa: E402

KERAS2 = Path(__file__).parent / "data" / "keras2"


def leaves(definition):
    for layer in definition["layers"]:
        if layer["type"] == "residual":
            yield from leaves({"layers": layer["branch"]})
            yield from leaves({"layers": layer["shortcut"]})
        else:
            yield layer["type"]


def every_layer_sequential():
    return keras.Sequential([
        keras.Input((16, 24, 3)),
        layers.Conv2D(8, 3, padding="same", activation="relu"),
        layers.BatchNormalization(),
        layers.Activation("tanh"),
        layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False),
        layers.ReLU(),
        layers.MaxPooling2D(2),
        layers.Conv2D(6, 1, activation="sigmoid"),
        layers.AveragePooling2D(2),
        layers.Flatten(),
        layers.Dense(16, activation="relu"),
        layers.Dropout(0.25),
        layers.Dense(5, activation="softmax")])


def test_a_sequential_model_with_every_supported_layer_becomes_the_same_network():
    model = every_layer_sequential()
    definition = definition_from_keras(model.to_json())
    assert definition["input_shape"] == [3, 16, 24]  # channels-last (H, W, C) turned channel-major
    assert list(leaves(definition)) == ["conv2d", "relu", "batch_norm", "tanh", "conv2d", "relu", "max_pool",
                                        "conv2d", "sigmoid", "avg_pool", "flatten", "dense", "relu", "dropout",
                                        "dense"]  # the final softmax is the loss's
    net = Network(definition)
    assert net.classes == 5
    total = sum(v.size for v in net.init_params(0).values())
    assert total == model.count_params()  # batch norm's moving statistics counted on both sides


def resnet_block_functional():
    inputs = keras.Input((16, 16, 1))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    y = layers.Conv2D(8, 3, padding="same", use_bias=False)(x)  # identity shortcut
    y = layers.BatchNormalization()(y)
    x = layers.ReLU()(layers.Add()([x, y]))
    y = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)  # projection shortcut
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(16, 3, padding="same", use_bias=False)(y)
    s = layers.Conv2D(16, 1, strides=2, use_bias=False)(x)
    x = layers.ReLU()(layers.Add()([y, s]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(3)(x))


def test_a_functional_model_with_residual_blocks_becomes_the_same_network():
    model = resnet_block_functional()
    definition = definition_from_keras(model.to_json())
    blocks = [layer for layer in definition["layers"] if layer["type"] == "residual"]
    assert [(len(b["branch"]), len(b["shortcut"])) for b in blocks] == [(2, 0), (4, 1)]
    net = Network(definition)
    assert net.classes == 3 and net.input_shape == (1, 16, 16)
    assert sum(v.size for v in net.init_params(0).values()) == model.count_params()


@pytest.mark.parametrize("model,message", [
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(2, 3, dilation_rate=2), layers.Flatten(),
                               layers.Dense(2)]), "layer 'conv2d' (Conv2D): dilation_rate [2, 2] is not supported"),
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), layers.SeparableConv2D(2, 3), layers.Flatten(),
                               layers.Dense(2)]), "layer 'separable_conv2d' (SeparableConv2D): not supported"),
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), layers.Flatten(), layers.Dense(4, activation="softmax"),
                               layers.Dense(2)]), "layer 'dense' (Dense): a softmax before the last layer"),
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), layers.MaxPooling2D(3, strides=1), layers.Flatten(),
                               layers.Dense(2)]), "layer 'max_pooling2d' (MaxPooling2D): overlapping windows"),
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(2, 3, activation="elu"), layers.Flatten(),
                               layers.Dense(2)]), "layer 'conv2d' (Conv2D): activation 'elu' is not supported"),
])
def test_an_unsupported_layer_or_option_is_one_line_naming_it(model, message):
    keras.backend.clear_session()  # the layers' default names count from scratch
    with pytest.raises(KerasError) as e:
        definition_from_keras(model().to_json())
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["sequential", "functional"])
def test_keras_2_files_become_the_same_networks_as_keras_3_definitions(name):
    """Files written by tf-keras (Keras 2; its version is in each file's 'keras_version') from the same models."""
    text = (KERAS2 / f"{name}.json").read_text()
    assert json.loads(text)["keras_version"].startswith("2.")
    keras.backend.clear_session()
    model = every_layer_sequential() if name == "sequential" else resnet_block_functional()
    ours, theirs = Network(definition_from_keras(text)), Network(definition_from_keras(model.to_json()))
    assert list(leaves(ours.to_json())) == list(leaves(theirs.to_json()))
    assert ours.input_shape == theirs.input_shape and ours.classes == theirs.classes
    assert sum(v.size for v in ours.init_params(0).values()) == sum(v.size for v in theirs.init_params(0).values())


def test_a_keras_json_file_is_a_model_spec_like_a_definition(tmp_path):
    from mnist_lenet_spark import models
    keras.backend.clear_session()
    path = tmp_path / "keras.json"
    path.write_text(resnet_block_functional().to_json())
    network = models.network_from(str(path))
    assert network.classes == 3 and network.input_shape == (1, 16, 16)
    path.write_text(keras.Sequential([keras.Input((8, 8, 1)), layers.UpSampling2D(), layers.Flatten(),
                                      layers.Dense(2)]).to_json())
    with pytest.raises(ValueError, match=f"{path}: layer 'up_sampling2d' \\(UpSampling2D\\): not supported"):
        models.network_from(str(path))

"""Writes sequential.json and functional.json: the models of tests/test_keras.py, from tf-keras (Keras 2), which
the dev dependencies do not install (it needs TensorFlow). Run in an environment with ``pip install tf-keras``:

    python tests/data/keras2/make.py
"""
from pathlib import Path

import tf_keras as keras
from tf_keras import layers

HERE = Path(__file__).parent

sequential = keras.Sequential([
    keras.Input((16, 24, 3)),
    layers.Conv2D(8, 3, padding="same", activation="relu"), layers.BatchNormalization(), layers.Activation("tanh"),
    layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False), layers.ReLU(), layers.MaxPooling2D(2),
    layers.Conv2D(6, 1, activation="sigmoid"), layers.AveragePooling2D(2), layers.Flatten(),
    layers.Dense(16, activation="relu"), layers.Dropout(0.25), layers.Dense(5, activation="softmax")])

inputs = keras.Input((16, 16, 1))
x = layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
x = layers.ReLU()(layers.BatchNormalization()(x))
y = layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same", use_bias=False)(x))
x = layers.ReLU()(layers.Add()([x, y]))
y = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)))
y = layers.Conv2D(16, 3, padding="same", use_bias=False)(y)
s = layers.Conv2D(16, 1, strides=2, use_bias=False)(x)
x = layers.GlobalAveragePooling2D()(layers.ReLU()(layers.Add()([y, s])))
functional = keras.Model(inputs, layers.Dense(3)(x))

for name, model in (("sequential", sequential), ("functional", functional)):
    (HERE / f"{name}.json").write_text(model.to_json(indent=1) + "\n")

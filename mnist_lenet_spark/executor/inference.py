"""Predictions of a model on uint8 images, in bounded memory: on the driver (``predict``, accuracy) and inside
Spark's Python workers (the validation task, ``rows.predict_pixels``). No pyspark import here."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from mnist_lenet_spark import data
from mnist_lenet_spark.executor.tasks import TaskContext, tune_process
from mnist_lenet_spark.models import base


def predict_images(model: base.Model, params: base.Params, images: np.ndarray, chunk: int = 500) -> np.ndarray:
    """Class probabilities (N, classes) of uint8 images (N, ...) of the model's C x H x W pixels each, scaled and
    predicted ``chunk`` at a time (bounded memory), in the parameters' dtype."""
    dtype = next(iter(params.values())).dtype.type
    parts = [model.predict(params, data.scale_batch(images[i:i + chunk], dtype, model.input_shape))  # (n, classes)
             for i in range(0, len(images), chunk)]
    return np.concatenate(parts) if parts else np.empty((0, model.classes), dtype)


def count_correct(model: base.Model, params: base.Params, images: np.ndarray, labels: np.ndarray,
                  chunk: int = 500) -> int:
    """How many uint8 images (N, ...) the model classifies as ``labels`` (N,)."""
    return int(np.sum(np.argmax(predict_images(model, params, images, chunk), axis=1) == labels))


def count_correct_task(ctx: TaskContext, source, params_bc, partition: Iterator[tuple[int, int, int]]):
    """Correct predictions over (shard, start, stop) row ranges of the data (positions within the shard)."""
    tune_process(ctx.threads)
    params = base.unflatten(params_bc.value, ctx.spec)
    correct = 0
    for k, a, b in partition:
        images, labels, _ = source.shard(k)
        correct += count_correct(ctx.model, params, images[a:b], labels[a:b])
    yield correct

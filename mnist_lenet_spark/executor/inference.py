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


def correct_and_loss(model: base.Model, params: base.Params, images: np.ndarray, labels: np.ndarray,
                     chunk: int = 500) -> tuple[int, float]:
    """(how many of uint8 ``images`` (N, ...) the model classifies as ``labels`` (N,), the sum of their
    cross-entropy losses -log p(label), inference mode, no L2 term): one pass for validation accuracy and loss."""
    correct, loss_sum = 0, 0.0
    labels = np.asarray(labels)
    for i in range(0, len(labels), chunk):
        probs = predict_images(model, params, images[i:i + chunk], chunk)  # (n, classes)
        y = labels[i:i + chunk]
        correct += int(np.sum(np.argmax(probs, axis=1) == y))
        picked = probs[np.arange(len(y)), y].astype(np.float64)
        loss_sum -= float(np.sum(np.log(np.maximum(picked, np.finfo(probs.dtype).tiny))))
    return correct, loss_sum


def correct_and_loss_task(ctx: TaskContext, source, params_bc, partition: Iterator[tuple[int, int, int]]):
    """[correct predictions, summed loss] (float64 (2,)) over (shard, start, stop) row ranges of the data."""
    tune_process(ctx.threads)
    params = base.unflatten(params_bc.value, ctx.spec)
    total = np.zeros(2)
    for k, a, b in partition:
        images, labels, _ = source.shard(k)
        total += correct_and_loss(ctx.model, params, images[a:b], labels[a:b])
    yield total

"""The single-process trainer: the sibling of ``spark.SyncSGD``, its reference and the baseline of its speed-up."""
from __future__ import annotations

from typing import Callable

import numpy as np

from mnist_lenet_spark.config import SGDConfig
from mnist_lenet_spark.executor import inference, rows, tasks
from mnist_lenet_spark.loop import training, update
from mnist_lenet_spark import models
from mnist_lenet_spark.models import base


def fit_local(train_images: np.ndarray, train_labels: np.ndarray, config: SGDConfig = SGDConfig(),
              model: base.Model | None = None, validation: tuple[np.ndarray, np.ndarray] | None = None,
              on_step: Callable[[dict], None] | None = None, state: update.TrainState | None = None,
              shards: int = 1, dtype=np.float32, kept: list[list[int]] | None = None,
              checkpoint: Callable[[update.TrainState], None] | None = None,
              checkpoint_every: int = 0, pixel_range: str | None = None) -> training.FitResult:
    """Train on ``train_images`` (N, ...) of the model's C x H x W pixels and int ``train_labels`` (N,);
    ``validation`` likewise. Pixels are uint8, or numbers in a declared ``pixel_range`` (``rows.model_pixels``).

    With ``shards=W`` it computes, one after the other, the same W mini-batches per step that
    ``SyncSGD(workers=W)`` spreads over Spark tasks: the same examples, the same update. ``kept[s]``: only
    these of step ``s``'s mini-batches (a backup-worker run's ``history[s]["kept"]``, replayed).
    ``state`` resumes from a checkpoint; ``checkpoint(state)`` is called every ``checkpoint_every`` steps.
    """
    model = model if model is not None else models.network_from("lenet")
    train_images = rows.model_pixels(model, train_images, "train_images", pixel_range)
    if validation is not None:
        validation = (rows.model_pixels(model, validation[0], "validation images", pixel_range), validation[1])
    spec, fresh = update.new_state(model, config.seed)
    state = state or fresh
    state.params = state.params.astype(dtype, copy=False)
    state.velocity = state.velocity.astype(dtype, copy=False)

    def gradient(flat, batches):
        if kept is not None:
            batches = [batches[k] for k in kept[batches[0].key.step]]
        return tasks.sum_batches(model, spec, flat, train_images, train_labels, batches, config.dropout), {}

    def evaluate(flat):
        images, labels = validation
        correct, loss_sum = inference.correct_and_loss(model, base.unflatten(flat, spec), images, labels)
        return {"accuracy": correct / len(labels), "loss": loss_sum / len(labels)}

    return training.fit_loop(model, spec, state, len(train_labels), shards, gradient, config,
                             evaluate if validation is not None else None, on_step, checkpoint, checkpoint_every)

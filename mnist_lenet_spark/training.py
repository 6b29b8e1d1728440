"""The synchronous SGD loop shared by the single-process and the Spark trainers.

A trainer supplies one function, ``gradient(flat_params, batches, epoch, step)``, that returns
the *sums* ``(grad_sum, loss_sum, count)`` over the given per-shard batches (here in one
process, in ``spark.py`` over executors). This loop divides by the count, adds the L2 term
once, applies SGD-Nesterov, decays the learning rate per epoch, validates, records history
and writes checkpoints. Both trainers therefore run exactly the same mathematics.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import data, sharding
from .models import base, lenet
from .nn.optim import sgd_nesterov

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A training option has a bad value; the message names the option and the value."""


@dataclass(frozen=True)
class SGDConfig:
    """SystemML's LeNet schedule; every default lives here (and is mirrored in conf/training.json)."""
    batch_size: int = 64  # per worker (per shard) per step
    lr: float = 0.01
    momentum: float = 0.9
    lr_decay: float = 0.95  # lr multiplied by this once per epoch
    l2: float = 5e-4
    epochs: int = 1
    seed: int = 0
    validate_every: int = 0  # steps; 0 = only at the end of each epoch
    max_steps: int | None = None  # stop after this many steps in all
    dropout: bool = True
    warmup_steps: int = 0  # linear warm-up of the learning rate (Goyal et al. 2017)

    def __post_init__(self):
        checks = [
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", math.isfinite(self.lr) and self.lr > 0, "must be a positive finite number"),
            ("momentum", math.isfinite(self.momentum) and 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("lr_decay", math.isfinite(self.lr_decay) and 0 < self.lr_decay <= 1, "must be in (0, 1]"),
            ("l2", math.isfinite(self.l2) and self.l2 >= 0, "must be >= 0"),
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("validate_every", self.validate_every >= 0, "must be >= 0"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "must be >= 1"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"{name} {rule}, got {getattr(self, name)!r}")

    def learning_rate(self, epoch: int, step: int) -> float:
        """lr * decay**epoch, ramped linearly over the first ``warmup_steps`` global steps."""
        lr = self.lr * self.lr_decay ** epoch
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr


@dataclass
class TrainState:
    """Everything a resumed run needs (dropout and shuffling are derived from seed, epoch and step)."""
    params: np.ndarray  # (P,) flat float32 parameters
    velocity: np.ndarray  # (P,) Nesterov momentum
    step: int = 0  # global steps done
    epoch: int = 0
    step_in_epoch: int = 0


@dataclass
class FitResult:
    params: base.Params
    history: list[dict] = field(default_factory=list)  # one record per step
    validation: list[dict] = field(default_factory=list)  # {step, epoch, accuracy}
    state: TrainState | None = None


Gradient = Callable[[np.ndarray, list, int, int], tuple]  # -> (grad_sum, loss_sum, count, info)


def batch_gradient(model: base.Model, spec: base.ParamSpec, flat_params: np.ndarray, images: np.ndarray,
                   labels: np.ndarray, index: np.ndarray, seed: list[int], train: bool,
                   dtype=np.float32) -> tuple[np.ndarray, float, int]:
    """(grad_sum (P,), loss_sum, count) of the uint8 ``images[index]``, without the L2 term.

    The unit of work of every trainer: one call per shard per step, in a Spark task or not.
    """
    if len(index) == 0:
        return np.zeros_like(flat_params), 0.0, 0
    rng = np.random.default_rng(seed) if train else None
    return gradient_sum(model, spec, flat_params, data.scale_batch(images[index], dtype), labels[index], rng)


def sum_batch_gradients(model: base.Model, spec: base.ParamSpec, flat_params: np.ndarray, images: np.ndarray,
                        labels: np.ndarray, items, train: bool, dtype=np.float32, should_stop=None):
    """(grad_sum, loss_sum, count) added over ``(index, seed)`` items (see ``sharding.step_items``); None if none.

    ``should_stop``: asked before each batch; True abandons the work and returns None.
    """
    total = None
    for index, seed in items:
        if should_stop is not None and should_stop():
            return None
        g, loss_sum, count = batch_gradient(model, spec, flat_params, images, labels, index, seed, train, dtype)
        total = (g, loss_sum, count) if total is None else (total[0] + g, total[1] + loss_sum, total[2] + count)
    return total


def gradient_sum(model: base.Model, spec: base.ParamSpec, flat_params: np.ndarray, X: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator | None) -> tuple[np.ndarray, float, int]:
    """(grad_sum (P,), loss_sum, count) of a scaled batch X (n, ...); dropout on when ``rng`` is given."""
    count = len(y)
    loss, grads = model.loss_and_grads(base.unflatten(flat_params, spec), X, y, train=rng is not None, rng=rng,
                                       l2=0.0)
    grad_sum = base.flatten(grads, spec)
    grad_sum *= grad_sum.dtype.type(count)
    return grad_sum, loss * count, count


def count_correct(model: base.Model, params: base.Params, images: np.ndarray, labels: np.ndarray,
                  chunk: int = 500, dtype=np.float32) -> int:
    """How many uint8 images (N, 28, 28) the model classifies as ``labels`` (N,)."""
    correct = 0
    for i in range(0, len(labels), chunk):
        probs = model.predict(params, data.scale_batch(images[i:i + chunk], dtype))  # (n, classes)
        correct += int(np.sum(np.argmax(probs, axis=1) == labels[i:i + chunk]))
    return correct


def fit_loop(model: base.Model, spec: base.ParamSpec, state: TrainState, num_examples: int, shards: int,
             gradient: Gradient, config: SGDConfig, evaluate: Callable[[np.ndarray], float] | None = None,
             on_step: Callable[[dict], None] | None = None,
             checkpoint: Callable[[TrainState], None] | None = None, checkpoint_every: int = 0) -> FitResult:
    """Run synchronous SGD from ``state`` until ``config.epochs`` (or ``max_steps``) are done."""
    result = FitResult(params={}, state=state)
    opt = sgd_nesterov.NesterovState(state.velocity)
    total_steps = sharding.steps_per_epoch(num_examples, shards, config.batch_size) * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    def validate():
        if evaluate is not None:
            acc = evaluate(state.params)
            result.validation.append({"step": state.step, "epoch": state.epoch, "accuracy": acc})
            log.info("step %d epoch %d: validation accuracy %.4f", state.step, state.epoch, acc)

    while state.epoch < config.epochs and state.step < total_steps:
        batches = sharding.epoch_batches(num_examples, shards, config.batch_size, config.seed, state.epoch)
        while state.step_in_epoch < len(batches) and state.step < total_steps:
            lr = config.learning_rate(state.epoch, state.step)
            t0 = time.perf_counter()
            grad_sum, loss_sum, count, info = gradient(state.params, batches[state.step_in_epoch],
                                                       state.epoch, state.step)
            if count == 0:
                log.warning("step %d: every mini-batch was empty; no update", state.step)
                grad = np.zeros_like(state.params)
                loss = float("nan")
            else:
                grad = grad_sum / grad_sum.dtype.type(count)  # mean over the step's examples
                loss = loss_sum / count
            if config.l2:  # added once, here on the driver, through views of the flat vectors
                loss += base.add_l2(base.unflatten(state.params, spec), base.unflatten(grad, spec),
                                    model.REGULARIZED, config.l2)
            new_params, opt = sgd_nesterov.update(state.params, grad, opt, lr=lr, momentum=config.momentum)
            state.params, state.velocity = new_params, opt.velocity
            state.step += 1
            state.step_in_epoch += 1
            record = {"step": state.step, "epoch": state.epoch, "loss": loss, "lr": lr, "examples": count,
                      "seconds": time.perf_counter() - t0, **info}
            result.history.append(record)
            if on_step:
                on_step(record)
            if config.validate_every and state.step % config.validate_every == 0:
                validate()
            if checkpoint and checkpoint_every and state.step % checkpoint_every == 0:
                checkpoint(state)
        if state.step_in_epoch >= len(batches):
            state.epoch += 1
            state.step_in_epoch = 0
            if not (config.validate_every and state.step % config.validate_every == 0):
                validate()
    result.params = {k: v.copy() for k, v in base.unflatten(state.params, spec).items()}
    return result


def new_state(model: base.Model, seed: int) -> tuple[base.ParamSpec, TrainState]:
    params = model.init_params(seed)
    spec = base.param_spec(params)
    flat = base.flatten(params, spec)
    return spec, TrainState(flat, sgd_nesterov.init(flat).velocity)


def save_checkpoint(path: str | os.PathLike, state: TrainState, config: SGDConfig, extra: dict | None = None) -> None:
    """Write parameters, momentum, step, epoch and config atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"step": state.step, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
            "config": dataclasses.asdict(config), **(extra or {})}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, params=state.params, velocity=state.velocity, meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("checkpoint at step %d written to %s", state.step, path)


def load_checkpoint(path: str | os.PathLike) -> tuple[TrainState, dict[str, Any]]:
    """(state, meta) from ``save_checkpoint``; a bad file raises ConfigError naming it."""
    path = Path(path)
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            state = TrainState(z["params"], z["velocity"], meta["step"], meta["epoch"], meta["step_in_epoch"])
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such checkpoint") from None
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"{path}: not a checkpoint of this tool ({e})") from None
    return state, meta


def fit_local(train_images: np.ndarray, train_labels: np.ndarray, config: SGDConfig = SGDConfig(),
              model: base.Model = lenet, validation: tuple[np.ndarray, np.ndarray] | None = None,
              on_step: Callable[[dict], None] | None = None, state: TrainState | None = None,
              shards: int = 1, dtype=np.float32) -> FitResult:
    """The single-process trainer: the reference for the Spark trainer and the baseline of its speed-up.

    ``train_images`` uint8 (N, 28, 28), ``train_labels`` int (N,); ``validation`` likewise.
    With ``shards=W`` it computes, one after the other, the same W mini-batches per step that
    ``SyncSGD(workers=W)`` spreads over Spark tasks: the same examples, the same update.
    """
    spec, fresh = new_state(model, config.seed)
    state = state or fresh
    state.params = state.params.astype(dtype, copy=False)
    state.velocity = state.velocity.astype(dtype, copy=False)

    def gradient(flat, batches, epoch, step):
        items = sharding.step_items(config.seed, epoch, step, batches)
        return (*sum_batch_gradients(model, spec, flat, train_images, train_labels, items, config.dropout, dtype), {})

    def evaluate(flat):
        images, labels = validation
        return count_correct(model, base.unflatten(flat, spec), images, labels, dtype=dtype) / len(labels)

    return fit_loop(model, spec, state, len(train_labels), shards, gradient, config,
                    evaluate if validation is not None else None, on_step)

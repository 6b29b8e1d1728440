"""The driver's side of synchronous SGD: the step loop, the update, and checkpoints.

A trainer (``spark.SyncSGD``, or ``local.fit_local`` in one process) supplies one function,
``gradient(flat_params, shard_batches) -> (GradientSum, info)``; this loop turns the sum into
the step's loss and gradient, applies SGD-Nesterov, decays the learning rate, validates, records
history and writes checkpoints. Every trainer therefore runs exactly the same mathematics.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnist_lenet_spark import files
from mnist_lenet_spark.config import ConfigError, SGDConfig
from mnist_lenet_spark.executor.tasks import GradientSum
from mnist_lenet_spark.loop import sharding
from mnist_lenet_spark.models import base
from mnist_lenet_spark.nn.optim import sgd_nesterov

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """The loss or the gradient of a step is not finite; raised before that step's update is applied."""


class StepFailure(RuntimeError):
    """A step could not get the gradients it needs (a task failed for good); no update was applied."""


def task_error(e: BaseException) -> str:
    """The task's own error line out of the Py4J / PythonException wrapper around it (else the first line)."""
    lines = [line.strip() for line in str(e).splitlines()]
    own = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Failure): ", line)
           and not line.startswith(("py4j.", "org.apache.", "java."))]
    if not own:
        return lines[0] if lines else type(e).__name__
    name, message = own[-1].split(": ", 1)
    return f"{name.rsplit('.', 1)[-1]}: {message}"  # InjectedFailure, not mnist_lenet_spark.executor.straggler.Inj...


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
    setup_seconds: float = 0.0  # before the first step: data to the executors, workers warmed (Spark)
    late_tasks: dict = field(default_factory=dict)  # backup workers: {stopped_by_signal, killed_by_spark}


Gradient = Callable[[np.ndarray, list[sharding.ShardBatch]], tuple[GradientSum, dict]]


def loss_and_gradient(sums: GradientSum, flat_params: np.ndarray, spec: base.ParamSpec, model: base.Model,
                      l2: float) -> tuple[float, np.ndarray]:
    """The step's mean loss and gradient (P,) from the summed ones, plus the L2 term, added once, here.

    With no examples (every mini-batch empty) the loss is NaN and only the L2 gradient remains.
    """
    if sums.count == 0:
        grad, loss = np.zeros_like(flat_params), float("nan")
    else:
        grad = sums.grad_sum / sums.grad_sum.dtype.type(sums.count)  # (P,)
        loss = sums.loss_sum / sums.count
    if l2:  # through dict views of the flat vectors: grad is updated in place
        loss += base.add_l2(base.unflatten(flat_params, spec), base.unflatten(grad, spec), model.REGULARIZED, l2)
    return loss, grad


def update_state(model: base.Model, spec: base.ParamSpec, flat_params: np.ndarray, grad: np.ndarray,
                 count: int) -> dict[str, np.ndarray]:
    """The next values of the model's state that is not trained (``model.STATE``, e.g. batch norm's running
    statistics), which lives in the parameter vector. Its gradient slots hold the step's statistics averaged
    over its mini-batches weighted by example count (sums / count, as for the gradient); the state moves
    towards them by ``model.STATE_MOMENTUM``. Those slots of ``grad`` are zeroed: no SGD step for state."""
    names = getattr(model, "STATE", ())
    if not names:
        return {}
    params, grads, momentum = base.unflatten(flat_params, spec), base.unflatten(grad, spec), model.STATE_MOMENTUM
    out = {}
    for name in names:
        value = params[name]
        out[name] = (1 - momentum) * value + momentum * grads[name] if count else value.copy()
        grads[name][...] = 0
    return out


def apply_update(model: base.Model, spec: base.ParamSpec, flat_params: np.ndarray, grad: np.ndarray, count: int,
                 opt: sgd_nesterov.NesterovState, lr: float, momentum: float):
    """One step from the step's gradient ``grad`` (sums / count): SGD with Nesterov momentum for the trained
    parameters, and the model's untrained state moved towards the step's statistics (``update_state``).
    Returns (next flat parameters, next optimiser state)."""
    model_state = update_state(model, spec, flat_params, grad, count)
    new_params, opt = sgd_nesterov.update(flat_params, grad, opt, lr=lr, momentum=momentum)
    if model_state:
        views = base.unflatten(new_params, spec)
        for name, value in model_state.items():
            views[name][...] = value
    return new_params, opt


def fit_loop(model: base.Model, spec: base.ParamSpec, state: TrainState, num_examples: int, shards: int,
             gradient: Gradient, config: SGDConfig, evaluate: Callable[[np.ndarray], float] | None = None,
             on_step: Callable[[dict], None] | None = None,
             checkpoint: Callable[[TrainState], None] | None = None, checkpoint_every: int = 0) -> FitResult:
    """Run synchronous SGD from ``state`` until ``config.epochs`` (or ``max_steps``) are done."""
    result = FitResult(params={}, state=state)
    opt = sgd_nesterov.NesterovState(state.velocity)
    total_steps = config.total_steps(num_examples, shards)

    def validate():
        if evaluate is not None:
            acc = evaluate(state.params)
            result.validation.append({"step": state.step, "epoch": state.epoch, "accuracy": acc})
            log.info("step %d epoch %d: validation accuracy %.4f", state.step, state.epoch, acc)

    while state.epoch < config.epochs and state.step < total_steps:
        batches = sharding.epoch_batches(num_examples, shards, config.batch_size, config.seed, state.epoch)
        while state.step_in_epoch < len(batches) and state.step < total_steps:
            lr = config.learning_rate(state.epoch, state.step, total_steps)
            t0 = time.perf_counter()
            step_batches = batches[state.step_in_epoch]
            if step_batches[0].key.step != state.step:  # the keys seed dropout and stragglers: they must agree
                raise RuntimeError(f"batch key step {step_batches[0].key.step} != state step {state.step}")
            sums, info = gradient(state.params, step_batches)
            if sums.count == 0:
                log.warning("step %d: every mini-batch was empty; only the L2 term updates", state.step)
            loss, grad = loss_and_gradient(sums, state.params, spec, model, config.l2)
            _check_finite(loss, grad, sums.count, state)
            state.params, opt = apply_update(model, spec, state.params, grad, sums.count, opt, lr, config.momentum)
            state.velocity = opt.velocity
            state.step += 1
            state.step_in_epoch += 1
            record = {"step": state.step, "total_steps": total_steps, "epoch": state.epoch, "loss": loss, "lr": lr,
                      "examples": sums.count, "seconds": time.perf_counter() - t0, **info}
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


def _check_finite(loss: float, grad: np.ndarray, count: int, state: TrainState) -> None:
    """DivergenceError naming the step when the loss or the gradient (P,) holds a NaN or an infinity."""
    what = None
    if count and not math.isfinite(loss):
        what = f"the loss is {loss}"
    elif not math.isfinite(float(np.sum(grad, dtype=np.float64))):  # one pass; a NaN or inf anywhere shows
        what = f"the gradient has {int(np.count_nonzero(~np.isfinite(grad)))} non-finite values"
    if what:
        raise DivergenceError(f"diverged at step {state.step + 1} (epoch {state.epoch + 1}): {what}; "
                              f"the update was not applied (try a smaller --lr)")


def new_state(model: base.Model, seed: int) -> tuple[base.ParamSpec, TrainState]:
    params = model.init_params(seed)
    spec = base.param_spec(params)
    flat = base.flatten(params, spec)
    return spec, TrainState(flat, sgd_nesterov.init(flat).velocity)


def save_checkpoint(path: str | os.PathLike, state: TrainState, config: SGDConfig, extra: dict | None = None) -> None:
    """Write parameters, momentum, step, epoch and config atomically (temp file + rename)."""
    meta = {"step": state.step, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
            "config": dataclasses.asdict(config), **(extra or {})}
    buffer = io.BytesIO()
    np.savez(buffer, params=state.params, velocity=state.velocity, meta=np.array(json.dumps(meta)))
    files.write_atomically(path, buffer.getvalue())
    log.info("checkpoint at step %d written to %s", state.step, path)


def load_checkpoint(path: str | os.PathLike) -> tuple[TrainState, dict[str, Any]]:
    """(state, meta) from ``save_checkpoint``; a bad file raises ConfigError naming it."""
    path = Path(path)
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            state = TrainState(z["params"], z["velocity"], int(meta["step"]), int(meta["epoch"]),
                               int(meta["step_in_epoch"]))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such checkpoint") from None
    except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
        # empty, truncated, random bytes, or another program's .npz
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{path}: not a checkpoint of this tool ({reason})") from None
    return state, meta

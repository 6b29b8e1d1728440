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
from mnist_lenet_spark.loop.sums import GradientSum
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
    early_stopping: EarlyStopping | None = None  # with early stopping on: the best validation so far
    # the asynchronous mode (async_sgd) only: mini-batches each shard has pushed; ``step`` counts its updates
    positions: list[int] | None = None


@dataclass
class EarlyStopping:
    """Early stopping's memory, saved in checkpoints: the best validation metric so far, the step and the
    parameters (P,) it was reached with (batch norm's running statistics included: they are in the vector), how
    many validations in a row have not improved on it, and the step a run stopped at (None: not stopped)."""
    metric: str  # "accuracy" or "loss"
    best: float | None = None
    best_step: int = 0
    best_params: np.ndarray | None = None
    bad_validations: int = 0
    stopped_step: int | None = None

    def improves(self, value: float, min_delta: float) -> bool:
        """Whether ``value`` beats the best by more than ``min_delta`` (the first value always does)."""
        if self.best is None:
            return True
        if self.metric == "accuracy":
            return value > self.best + min_delta
        return value < self.best - min_delta

    def meta(self) -> dict:
        """The JSON part of a checkpoint (``best_params`` goes into the .npz beside it)."""
        return {"metric": self.metric, "best": self.best, "best_step": self.best_step,
                "bad_validations": self.bad_validations, "stopped_step": self.stopped_step}


@dataclass
class FitResult:
    params: base.Params
    history: list[dict] = field(default_factory=list)  # one record per step
    validation: list[dict] = field(default_factory=list)  # {step, epoch, accuracy}
    state: TrainState | None = None
    setup_seconds: float = 0.0  # before the first step: data to the executors, workers warmed (Spark)
    late_tasks: dict = field(default_factory=dict)  # backup workers: {stopped_by_signal, killed_by_spark}
    # early stopping (config.early_stopping_patience > 0): ``params`` are those of the best validation
    stopped_early: bool = False  # the run stopped because the validation metric stopped improving
    stopped_step: int | None = None  # the step it stopped after
    best_step: int | None = None  # the step of the best validation: the step of ``params``
    best_metric: float | None = None  # the validation metric (config.early_stopping_metric) there

    def params_validation_accuracy(self, config: SGDConfig) -> float | None:
        """The validation accuracy of the parameters the fit ended with: the last validation's, or under early
        stopping the best one's."""
        if not self.validation:
            return None
        if config.early_stopping_patience and self.best_step is not None:
            at_best = [v for v in self.validation if v["step"] == self.best_step]
            if at_best:
                return at_best[-1]["accuracy"]
        return self.validation[-1]["accuracy"]


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
    """Run synchronous SGD from ``state`` until ``config.epochs`` (or ``max_steps``) are done, or until early
    stopping (``config.early_stopping_patience`` validations in a row without improvement) stops it.

    ``evaluate(flat_params)`` -> {"accuracy": ..., "loss": ...} on the validation data, run every
    ``config.validate_every`` steps and at each epoch's end.
    """
    result = FitResult(params={}, state=state)
    opt = sgd_nesterov.NesterovState(state.velocity)
    total_steps = config.total_steps(num_examples, shards)
    stopping = _early_stopping(config, state, evaluate is not None)
    validated_step = None

    def validate():
        nonlocal validated_step
        if evaluate is None:
            return
        scores = evaluate(state.params)
        validated_step = state.step
        result.validation.append({"step": state.step, "epoch": state.epoch, **scores})
        log.info("step %d epoch %d: validation accuracy %.4f, loss %.4f", state.step, state.epoch,
                 scores["accuracy"], scores["loss"])
        if stopping is not None:
            _track(stopping, scores[stopping.metric], state, config)

    while stopping_allows(stopping) and state.epoch < config.epochs and state.step < total_steps:
        batches = sharding.epoch_batches(num_examples, shards, config.batch_size, config.seed, state.epoch)
        while stopping_allows(stopping) and state.step_in_epoch < len(batches) and state.step < total_steps:
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
    final = state.params
    if stopping is not None:
        final = _best_params(stopping, state, evaluate, validated_step, config, result)
    result.params = {k: v.copy() for k, v in base.unflatten(final, spec).items()}
    return result


def stopping_allows(stopping: EarlyStopping | None) -> bool:
    """Whether the loop may take another step: not once early stopping has stopped the run."""
    return stopping is None or stopping.stopped_step is None


def _early_stopping(config: SGDConfig, state: TrainState, has_validation: bool) -> EarlyStopping | None:
    """The state's early-stopping memory (a resumed run's, else a new one), or None with early stopping off."""
    if not config.early_stopping_patience:
        return None
    if not has_validation:
        raise ConfigError(f"early_stopping_patience {config.early_stopping_patience} needs validation data: "
                          f"early stopping watches the validation {config.early_stopping_metric}")
    if state.early_stopping is None:
        state.early_stopping = EarlyStopping(config.early_stopping_metric)
    elif state.early_stopping.metric != config.early_stopping_metric:
        raise ConfigError(f"early_stopping_metric {config.early_stopping_metric!r}: the resumed run watched "
                          f"{state.early_stopping.metric!r}")
    if state.early_stopping.stopped_step is not None:
        log.info("early stopping had stopped this run at step %d: no more steps", state.early_stopping.stopped_step)
    return state.early_stopping


def _track(stopping: EarlyStopping, value: float, state: TrainState, config: SGDConfig) -> None:
    """One validation's ``value`` into the early-stopping memory; stops the run after ``patience`` without
    improvement."""
    if stopping.improves(value, config.early_stopping_min_delta):
        stopping.best, stopping.best_step, stopping.bad_validations = value, state.step, 0
        stopping.best_params = state.params.copy()
        return
    stopping.bad_validations += 1
    if stopping.bad_validations >= config.early_stopping_patience:
        stopping.stopped_step = state.step
        log.info("early stopping at step %d: validation %s has not improved by more than %g in %d validations; "
                 "the best, %.4f, was at step %d", state.step, stopping.metric, config.early_stopping_min_delta,
                 stopping.bad_validations, stopping.best, stopping.best_step)


def _best_params(stopping: EarlyStopping, state: TrainState, evaluate, validated_step: int | None,
                 config: SGDConfig, result: FitResult) -> np.ndarray:
    """The parameters (P,) the fit ends with under early stopping: the best validation's, and the result's record
    of it. A run that ends (epochs, max_steps) after steps no validation saw validates its last parameters once
    more, and ends with them if they are the best; that validation does not enter the early-stopping memory
    (``state``), so a run resumed from the final checkpoint goes on as an uninterrupted one would."""
    best, best_step, params = stopping.best, stopping.best_step, stopping.best_params
    if stopping.stopped_step is None and validated_step != state.step and state.step > best_step:
        scores = evaluate(state.params)
        result.validation.append({"step": state.step, "epoch": state.epoch, **scores, "final": True})
        log.info("step %d (last): validation accuracy %.4f, loss %.4f", state.step, scores["accuracy"],
                 scores["loss"])
        if params is None or stopping.improves(scores[stopping.metric], config.early_stopping_min_delta):
            best, best_step, params = scores[stopping.metric], state.step, state.params
    result.stopped_early = stopping.stopped_step is not None
    result.stopped_step = stopping.stopped_step
    result.best_step, result.best_metric = best_step, best
    return params if params is not None else state.params


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
    """Write parameters, momentum, step, epoch, config, early stopping's memory and (asynchronous mode) the
    shards' positions atomically (temp file + rename)."""
    meta = {"step": state.step, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
            "config": dataclasses.asdict(config), **(extra or {})}
    if state.positions is not None:
        meta["positions"] = [int(p) for p in state.positions]
    arrays = {"params": state.params, "velocity": state.velocity}
    if state.early_stopping is not None:
        meta["early_stopping"] = state.early_stopping.meta()
        if state.early_stopping.best_params is not None:
            arrays["best_params"] = state.early_stopping.best_params
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, meta=np.array(json.dumps(meta)))
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
            if meta.get("positions") is not None:
                state.positions = [int(p) for p in meta["positions"]]
            if meta.get("early_stopping") is not None:
                found = meta["early_stopping"]
                state.early_stopping = EarlyStopping(
                    str(found["metric"]), None if found["best"] is None else float(found["best"]),
                    int(found["best_step"]), z["best_params"] if "best_params" in z.files else None,
                    int(found["bad_validations"]),
                    None if found["stopped_step"] is None else int(found["stopped_step"]))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such checkpoint") from None
    except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
        # empty, truncated, random bytes, or another program's .npz
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{path}: not a checkpoint of this tool ({reason})") from None
    return state, meta


def resume_state(path: str | os.PathLike, expected: dict, model: base.Model, config: SGDConfig,
                 name: Callable[[str], str]) -> TrainState:
    """The state of the checkpoint at ``path``, refused (ConfigError naming the file and the setting) unless it
    continues the run that ``expected`` describes: what ``save_checkpoint``'s ``extra`` recorded (``mode``,
    ``seed``, ``batch_size``, ``workers``, ``backup_workers``, ``model``, ``data``, as far as the caller knows them)
    over ``model``, with ``config`` (the run's, learning rate scaled). ``name(key)`` spells a setting as the
    caller's user sets it (the job: ``--batch-size``; the estimator: ``batchSize``). A changed learning rate is
    allowed and logged."""
    state, meta = load_checkpoint(path)
    saved = {**meta.get("config", {}), **meta}
    saved_mode = "async" if state.positions is not None else "sync"  # checkpoints from before the mode are sync
    mode = expected.get("mode", "sync")
    if saved_mode != mode:
        raise ConfigError(f"{path}: written with {name('mode')} {saved_mode}, resumed with {name('mode')} {mode} (a "
                          f"run goes on in the mode it started in)")
    for key, value in expected.items():
        if key in saved and saved[key] != value:
            raise ConfigError(f"{path}: written with {name(key)} {saved[key]}, resumed with {value}")
    _, fresh = new_state(model, config.seed)
    for part in ("params", "velocity"):
        found, wanted = getattr(state, part), getattr(fresh, part)
        if found.shape != wanted.shape or found.dtype != wanted.dtype:
            raise ConfigError(f"{path}: {part} of shape {found.shape} {found.dtype}, the model has "
                              f"{wanted.shape} {wanted.dtype}")
    watched = state.early_stopping.metric if state.early_stopping is not None else None
    if config.early_stopping_patience and watched not in (None, config.early_stopping_metric):
        raise ConfigError(f"{path}: written with {name('early_stopping_metric')} {watched}, resumed with "
                          f"{config.early_stopping_metric}")
    if saved.get("lr") is not None and saved["lr"] != config.lr:
        log.info("resuming with lr %g (the checkpoint's run had %g)", config.lr, saved["lr"])
    log.info("resuming from %s at step %d", path, state.step)
    return state


def warm_state(params: base.Params, model: base.Model, seed: int, source: str) -> TrainState:
    """A fresh state (step 0, no momentum) that starts from ``params`` (a trained model's weights) instead of
    ``model``'s initialisation; ConfigError naming ``source`` when the weights are not ``model``'s (a name or a
    shape differs)."""
    spec, fresh = new_state(model, seed)
    wanted, found = dict(spec), {name: tuple(np.shape(value)) for name, value in params.items()}
    if found != wanted:
        missing = [n for n in wanted if n not in found]
        extra = [n for n in found if n not in wanted]
        shape = next((n for n in wanted if n in found and found[n] != wanted[n]), None)
        what = (f"{shape} has shape {found[shape]}, the network's is {wanted[shape]}" if shape else
                f"it lacks {', '.join(missing[:3])}" if missing else f"it has {', '.join(extra[:3])}, which the "
                f"network does not")
        raise ConfigError(f"{source}: its weights are not this network's ({what}; {len(found)} arrays, the network "
                          f"has {len(wanted)})")
    fresh.params = base.flatten(params, spec, fresh.params.dtype)  # (P,)
    return fresh

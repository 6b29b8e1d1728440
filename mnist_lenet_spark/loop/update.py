"""The update of synchronous SGD and its state: the step's loss and gradient from summed ones (the L2 term added
once, here), SGD-Nesterov with the model's untrained state (batch norm's running statistics) moved alongside, the
check that stops a diverging run, and early stopping's memory. What a run is at any moment is a ``TrainState``."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from mnist_lenet_spark.config import ConfigError, SGDConfig
from mnist_lenet_spark.loop.sums import GradientSum
from mnist_lenet_spark.models import base
from mnist_lenet_spark.nn.optim import sgd_nesterov

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """The loss or the gradient of a step is not finite; raised before that step's update is applied."""


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


def new_state(model: base.Model, seed: int) -> tuple[base.ParamSpec, TrainState]:
    params = model.init_params(seed)
    spec = base.param_spec(params)
    flat = base.flatten(params, spec)
    return spec, TrainState(flat, sgd_nesterov.init(flat).velocity)


def loss_and_gradient(sums: GradientSum, flat_params: np.ndarray, spec: base.ParamSpec, model: base.Model,
                      l2: float) -> tuple[float, np.ndarray]:
    """The step's mean loss and gradient (P,) from the summed ones, plus the L2 term, added once, here. With no
    examples (every mini-batch empty) the loss is NaN and only the L2 gradient remains."""
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
    statistics), which lives in the parameter vector. Its gradient slots hold the step's statistics averaged over its
    mini-batches weighted by example count (sums / count, as for the gradient); the state moves towards them by
    ``model.STATE_MOMENTUM``. Those slots of ``grad`` are zeroed: no SGD step for state."""
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
    """(next flat parameters, next optimiser state) from the step's gradient ``grad`` (sums / count): SGD with Nesterov
    momentum for the trained parameters, the untrained state moved towards the step's statistics (``update_state``)."""
    model_state = update_state(model, spec, flat_params, grad, count)
    new_params, opt = sgd_nesterov.update(flat_params, grad, opt, lr=lr, momentum=momentum)
    if model_state:
        views = base.unflatten(new_params, spec)
        for name, value in model_state.items():
            views[name][...] = value
    return new_params, opt


def check_finite(loss: float, grad: np.ndarray, count: int, state: TrainState) -> None:
    """DivergenceError naming the step when the loss or the gradient (P,) holds a NaN or an infinity."""
    what = None
    if count and not math.isfinite(loss):
        what = f"the loss is {loss}"
    elif not math.isfinite(float(np.sum(grad, dtype=np.float64))):  # one pass; a NaN or inf anywhere shows
        what = f"the gradient has {int(np.count_nonzero(~np.isfinite(grad)))} non-finite values"
    if what:
        raise DivergenceError(f"diverged at step {state.step + 1} (epoch {state.epoch + 1}): {what}; "
                              f"the update was not applied (try a smaller --lr)")


def stopping_allows(stopping: EarlyStopping | None) -> bool:
    """Whether the loop may take another step: not once early stopping has stopped the run."""
    return stopping is None or stopping.stopped_step is None


def start_early_stopping(config: SGDConfig, state: TrainState, has_validation: bool) -> EarlyStopping | None:
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


def record_validation(stopping: EarlyStopping, value: float, state: TrainState, config: SGDConfig) -> None:
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

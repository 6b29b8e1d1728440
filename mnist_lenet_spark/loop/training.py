"""The driver's loop of synchronous SGD, with no Spark in it. A trainer (``spark.SyncSGD``, or ``local.fit_local`` in
one process) supplies one function, ``gradient(flat_params, shard_batches) -> (GradientSum, info)``; this loop turns the
sum into the step's update (``update``), decays the learning rate, validates, keeps early stopping's memory, records
history and calls for checkpoints (``checkpoint`` writes them). Every trainer therefore runs exactly the same
mathematics."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mnist_lenet_spark.config import SGDConfig
from mnist_lenet_spark.loop import sharding, update
from mnist_lenet_spark.loop.sums import GradientSum
from mnist_lenet_spark.models import base
from mnist_lenet_spark.nn.optim import sgd_nesterov

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    params: base.Params
    history: list[dict] = field(default_factory=list)  # one record per step
    validation: list[dict] = field(default_factory=list)  # {step, epoch, accuracy}
    state: update.TrainState | None = None
    setup_seconds: float = 0.0  # before the first step: data to the executors, workers warmed (Spark)
    late_tasks: dict = field(default_factory=dict)  # backup workers: {stopped_by_signal, killed_by_spark}
    tasks: list = field(default_factory=list)  # long tasks (async, one-job engine): each attempt's report
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


def fit_loop(model: base.Model, spec: base.ParamSpec, state: update.TrainState, num_examples: int, shards: int,
             gradient: Gradient, config: SGDConfig, evaluate: Callable[[np.ndarray], float] | None = None,
             on_step: Callable[[dict], None] | None = None,
             checkpoint: Callable[[update.TrainState], None] | None = None, checkpoint_every: int = 0) -> FitResult:
    """Run synchronous SGD from ``state`` until ``config.epochs`` (or ``max_steps``) are done, or until early
    stopping (``config.early_stopping_patience`` validations in a row without improvement) stops it.
    ``evaluate(flat_params)`` -> {"accuracy": ..., "loss": ...} on the validation data, run every
    ``config.validate_every`` steps and at each epoch's end."""
    result = FitResult(params={}, state=state)
    opt = sgd_nesterov.NesterovState(state.velocity)
    total_steps = config.total_steps(num_examples, shards)
    stopping = update.start_early_stopping(config, state, evaluate is not None)
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
            update.record_validation(stopping, scores[stopping.metric], state, config)

    while update.stopping_allows(stopping) and state.epoch < config.epochs and state.step < total_steps:
        batches = sharding.epoch_batches(num_examples, shards, config.batch_size, config.seed, state.epoch)
        while update.stopping_allows(stopping) and state.step_in_epoch < len(batches) and state.step < total_steps:
            lr = config.learning_rate(state.epoch, state.step, total_steps)
            t0 = time.perf_counter()
            step_batches = batches[state.step_in_epoch]
            if step_batches[0].key.step != state.step:  # the keys seed dropout and stragglers: they must agree
                raise RuntimeError(f"batch key step {step_batches[0].key.step} != state step {state.step}")
            sums, info = gradient(state.params, step_batches)
            if sums.count == 0:
                log.warning("step %d: every mini-batch was empty; only the L2 term updates", state.step)
            loss, grad = update.loss_and_gradient(sums, state.params, spec, model, config.l2)
            update.check_finite(loss, grad, sums.count, state)
            state.params, opt = update.apply_update(model, spec, state.params, grad, sums.count, opt, lr,
                                                    config.momentum)
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


def _best_params(stopping: update.EarlyStopping, state: update.TrainState, evaluate, validated_step: int | None,
                 config: SGDConfig, result: FitResult) -> np.ndarray:
    """The parameters (P,) the fit ends with under early stopping: the best validation's, and the result's record
    of it. A run that ends (epochs, max_steps) after steps no validation saw validates its last parameters once
    more, and ends with them if they are the best; that validation does not enter the early-stopping memory
    (``state``), so a run resumed from the final checkpoint goes on as an uninterrupted one would."""
    best, best_step, params = stopping.best, stopping.best_step, stopping.best_params
    if stopping.stopped_step is None and validated_step != state.step and state.step > best_step:
        scores = evaluate(state.params)
        result.validation.append({"step": state.step, "epoch": state.epoch, **scores, "final": True})
        log.info("step %d (last): validation accuracy %.4f, loss %.4f", state.step, scores["accuracy"], scores["loss"])
        if params is None or stopping.improves(scores[stopping.metric], config.early_stopping_min_delta):
            best, best_step, params = scores[stopping.metric], state.step, state.params
    result.stopped_early = stopping.stopped_step is not None
    result.stopped_step = stopping.stopped_step
    result.best_step, result.best_metric = best_step, best
    return params if params is not None else state.params

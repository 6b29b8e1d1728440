"""Asynchronous SGD (Downpour-style) on Spark: one job of ``workers`` long tasks, one per shard, each looping pull
parameters, gradient of its next mini-batch, push, against the driver's parameter service (``cluster.async_service``),
whose one apply thread applies every push as it arrives with the synchronous mode's update (SGD-Nesterov, L2, batch
norm's running statistics). The run ends on a global budget of updates the service announces. See docs/async.md.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from mnist_lenet_spark.cluster import async_service, one_job, step_signal, task_errors
from mnist_lenet_spark.config import ConfigError, SGDConfig
from mnist_lenet_spark.executor import async_task, tasks
from mnist_lenet_spark.executor.shards import StagedShards
from mnist_lenet_spark.loop import training, update
from mnist_lenet_spark.loop.sums import GradientSum
from mnist_lenet_spark.models import base
from mnist_lenet_spark.nn.optim import sgd_nesterov
from mnist_lenet_spark.spark import SparkTrainer

log = logging.getLogger(__name__)
POLL_SECONDS = 0.05


@dataclass
class AsyncFitResult(training.FitResult):
    """``FitResult`` plus the asynchronous run's own record: ``history`` has one record per applied update (its
    ``staleness``: versions applied between the gradient's pull and its apply; ``shard``)."""
    refused: dict = field(default_factory=dict)  # pushes not applied, by reason
    updates_per_second: float = 0.0
    examples_per_second: float = 0.0
    run_seconds: float = 0.0  # from the job's start to the budget spent

    @property
    def staleness(self) -> list[int]:
        return [record["staleness"] for record in self.history]

    def staleness_summary(self) -> dict:
        """{mean, p90, max} of this run's staleness (None each when no update was applied)."""
        values = self.staleness
        if not values:
            return {"mean": None, "p90": None, "max": None}
        return {"mean": float(np.mean(values)), "p90": float(np.percentile(values, 90)), "max": int(max(values))}


class Updater:
    """The apply thread's update: the synchronous step's mathematics for one pushed gradient sum. Update ``u``
    (0-based) has the learning rate of global step ``u`` in epoch ``u // per_epoch`` of a run of ``budget``."""

    def __init__(self, model: base.Model, spec: base.ParamSpec, state: update.TrainState, config: SGDConfig,
                 budget: int, per_epoch: int, on_step=None):
        self.model, self.spec, self.state, self.config = model, spec, state, config
        self.budget, self.per_epoch, self.on_step = budget, per_epoch, on_step
        self.opt = sgd_nesterov.NesterovState(state.velocity)
        self.history: list[dict] = []
        self.started = time.perf_counter()

    def __call__(self, grad_sum: np.ndarray, loss_sum: float, count: int, staleness: int, shard: int,
                 params: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        state, config = self.state, self.config
        state.epoch, state.step_in_epoch = divmod(state.step, self.per_epoch)
        lr = config.learning_rate(state.epoch, state.step, self.budget)
        sums = GradientSum(grad_sum, loss_sum, count)
        loss, grad = update.loss_and_gradient(sums, params, self.spec, self.model, config.l2)
        update.check_finite(loss, grad, count, state)
        state.params, self.opt = update.apply_update(self.model, self.spec, params, grad, count, self.opt, lr,
                                                       config.momentum)
        state.velocity = self.opt.velocity
        state.step += 1
        state.epoch, state.step_in_epoch = divmod(state.step, self.per_epoch)
        record = {"step": state.step, "total_steps": self.budget, "epoch": (state.step - 1) // self.per_epoch,
                  "loss": loss, "lr": lr, "examples": count, "staleness": staleness, "shard": shard,
                  "seconds": time.perf_counter() - t0, "time": time.perf_counter() - self.started}
        self.history.append(record)
        if self.on_step:
            self.on_step(record)
        return state.params


class AsyncSGD(SparkTrainer):
    """Asynchronous SGD over ``workers`` long Spark tasks (one per shard, each with mini-batches of ``batch_size``).
    Takes ``spark.SparkTrainer``'s parameters (``lr_scaling``: "linear" multiplies lr by batch_size / 64: an update
    applies one task's mini-batch, so the workers do not enter the rule as they do in the synchronous mode) and:

    max_staleness : refuse a gradient more than this many updates behind (None: off, the default)
    finish_seconds : once the budget is spent, how long the driver waits for the tasks to end before Spark cancels them
    stall_seconds : the run fails when no update is applied for this long while the job runs
    """

    def __init__(self, spark, workers: int = 2, *, max_staleness: int | None = None, finish_seconds: float = 60.0,
                 stall_seconds: float = 600.0, lr_scaling: str = "none", **options):
        if max_staleness is not None and (type(max_staleness) is not int or max_staleness < 0):
            raise ConfigError(f"max_staleness must be an integer >= 0 or None, got {max_staleness!r}")
        for name, value in (("finish_seconds", finish_seconds), ("stall_seconds", stall_seconds)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be a number > 0, got {value!r}")
        super().__init__(spark, workers, lr_scaling=lr_scaling, **options)
        self.max_staleness, self.finish_seconds, self.stall_seconds = max_staleness, finish_seconds, stall_seconds

    def _batches_per_update(self) -> int:
        return 1  # each update is one task's mini-batch

    def fit_data(self, source: tasks.BroadcastData | StagedShards, num_examples: int,
                 epochs: int | None = None, validation: tasks.BroadcastData | StagedShards | None = None, *,
                 max_steps: int | None = None, on_step=None, state: update.TrainState | None = None,
                 checkpoint=None, checkpoint_every: int = 0) -> AsyncFitResult:
        """Train until ``epochs`` passes over the data (or ``max_steps`` updates in all) are applied. Each update is one
        shard's mini-batch; ``on_step(record)`` and, every ``checkpoint_every`` updates, ``checkpoint(state)`` are
        called from the apply thread; ``validation`` is evaluated once, at the end. ``state`` (an asynchronous run's:
        ``state.positions`` set) resumes at its update count with each shard at its position (docs/async.md)."""
        config = self._fit_config(epochs, max_steps)
        try:  # whatever fails before the job starts, no warm-up job outlives the call
            config.check_data(num_examples, self.workers)
            spec, fresh = update.new_state(self.model, config.seed)
            options, updater, state = self._updates(config, spec, fresh, state, num_examples, on_step, checkpoint,
                                                    checkpoint_every)
            self.start_warm_up()
            bind, host, ports = step_signal.driver_address(self.sc.getConf())
            server = async_service.ParameterServer(bind=bind, host=host, ports=ports, **options)
        finally:
            setup_seconds = self._finish_warm_up()
        try:
            walk = async_task.ShardBatches(num_examples, self.workers, config.batch_size, config.seed)
            reports, run_seconds = self._run(server, self._context(spec, config.dropout), source, walk)
        finally:
            server.shutdown()
        result = self._result(server, updater.history, state, spec, reports, run_seconds, setup_seconds)
        if validation is not None:
            self._validated(result, self._evaluate(spec, validation, state.params))
        return result

    def _coordination(self, config, spec, fresh, state, count, evaluate, on_step, checkpoint, checkpoint_every):
        """The coordinator applies each push as it comes; ``evaluate`` runs here, once, at the end."""
        options, updater, state = self._updates(config, spec, fresh, state, count, on_step, checkpoint,
                                                checkpoint_every)

        def finish(outcome, reports: list) -> AsyncFitResult:
            history, final, run_seconds = outcome.value or (updater.history, state, 0.0)
            result = self._result(outcome, history, final, spec, reports, run_seconds, 0.0)
            if evaluate is not None:
                self._validated(result, evaluate(final.params))
            return result
        return one_job.Coordination(options, partial(_async_run, updater)), finish

    def _updates(self, config: SGDConfig, spec, fresh: update.TrainState, state: update.TrainState | None,
                 count: int, on_step, checkpoint, checkpoint_every: int):
        """(the coordinator's arguments, the apply thread's ``Updater``, the state) of a run from ``state`` (None: from
        ``fresh``) on ``count`` examples."""
        shards = self.workers
        if config.early_stopping_patience:
            raise ConfigError("early_stopping_patience: not supported by the asynchronous mode")
        state = fresh if state is None else _resumable(state, fresh, shards)
        state.params = state.params.astype(np.float32, copy=False)  # the wire carries float32
        state.velocity = state.velocity.astype(np.float32, copy=False)
        if state.positions is None:
            state.positions = [0] * shards
        per_epoch = async_task.ShardBatches(count, shards, config.batch_size, config.seed).per_epoch()
        budget = per_epoch * config.epochs
        if config.max_steps is not None:
            budget = min(budget, config.max_steps)
        updater = Updater(self.model, spec, state, config, budget, per_epoch, on_step)

        def after_apply(version: int, positions: dict[int, int]) -> None:  # in the apply thread
            state.positions = [positions.get(k, 0) for k in range(shards)]
            if checkpoint is not None and checkpoint_every and version % checkpoint_every == 0:
                checkpoint(state)
        if state.step:
            log.info("asynchronous run resumed at update %d of %d; shards at mini-batches %s", state.step, budget,
                     state.positions)
        return ({"params": state.params, "apply": updater, "budget": budget, "partitions": shards,
                 "version": state.step, "max_staleness": self.max_staleness,
                 "positions": dict(enumerate(state.positions)), "after_apply": after_apply}, updater, state)

    def _result(self, server: async_service.ParameterServer | one_job.Outcome, history: list[dict],
                state: update.TrainState, spec, reports: list[async_task.AsyncReport], run_seconds: float,
                setup_seconds: float) -> AsyncFitResult:
        """The run's result once its job has ended (``server``: the coordinator, or what it left); its error, or a
        StepFailure when the budget was not spent."""
        state.positions = [server.positions.get(k, 0) for k in range(self.workers)]  # with any refused as too stale
        if server.error is not None:
            raise server.error
        if server.applied < server.budget:
            lost = [r.ended for r in reports if r.ended not in ("budget", "superseded")]
            cause = lost[0] if lost else "the job ended"
            raise task_errors.StepFailure(f"the asynchronous run ended after {server.applied} of {server.budget} "
                                          f"updates: {cause}")
        result = AsyncFitResult(params={k: v.copy() for k, v in base.unflatten(state.params, spec).items()},
                                history=history, state=state, setup_seconds=setup_seconds,
                                refused=dict(server.refused), tasks=reports, run_seconds=run_seconds)
        if run_seconds > 0:
            result.updates_per_second = len(history) / run_seconds
            result.examples_per_second = sum(r["examples"] for r in history) / run_seconds
        staleness = result.staleness
        log.info("asynchronous run: %d updates in %.1f s, staleness mean %.2f max %d, refused %s", len(staleness),
                 run_seconds, float(np.mean(staleness)) if staleness else 0.0, max(staleness, default=0),
                 result.refused)
        return result

    @staticmethod
    def _validated(result: AsyncFitResult, scores: dict) -> None:
        state = result.state
        result.validation.append({"step": state.step, "epoch": state.epoch, **scores})
        log.info("step %d: validation accuracy %.4f, loss %.4f", state.step, scores["accuracy"], scores["loss"])

    def _run(self, server: async_service.ParameterServer, ctx: tasks.TaskContext, source,
             walk: async_task.ShardBatches) -> tuple[list[async_task.AsyncReport], float]:
        """The job of long tasks, until the budget is spent (or the run stops or stalls); bounded waits for its
        end. (the tasks' reports, seconds from the job's start to the budget spent)"""
        group = f"mnist-lenet-async-{uuid.uuid4().hex[:8]}"
        rdd = source.partitions(self.sc, walk.shards).mapPartitions(
            partial(async_task.async_task, ctx, source, server.endpoint, walk))
        reports: list = []
        slots = self.task_slots()
        if walk.shards > slots:
            log.warning("asynchronous run: %d tasks but about %d task slots: the tasks without a slot start only "
                        "when others end, so they push nothing (use workers <= the slots)", walk.shards, slots)
        started = time.perf_counter()
        server.last_progress = time.monotonic()
        thread, failure = task_errors.start_job(self.sc, group, f"asynchronous SGD: {walk.shards} tasks, "
                                                f"{server.budget} updates", lambda: reports.extend(rdd.collect()))
        try:
            while not server.done.wait(POLL_SECONDS):
                if not thread.is_alive():
                    break
                if time.monotonic() - server.last_progress > self.stall_seconds:
                    server.stop(task_errors.StepFailure(
                        f"the asynchronous run stalled: no update in {self.stall_seconds:g} s (stall_seconds) "
                        f"after {server.applied} of {server.budget}"))
        except BaseException:  # interrupted: no job outlives the fit
            self.sc.cancelJobGroup(group)
            raise
        run_seconds = time.perf_counter() - started
        server.stop()  # pulls answer stop now; a task ends after its current mini-batch
        thread.join(self.finish_seconds)
        if thread.is_alive():
            log.warning("asynchronous run: tasks still running %g s after the end (finish_seconds); cancelling them",
                        self.finish_seconds)
            self.sc.cancelJobGroup(group)
            thread.join(30.0)
            if thread.is_alive():
                log.warning("asynchronous run: the job did not end within 30 s of its cancel; going on")
        if failure and server.applied < server.budget and server.error is None:
            reports.append(async_task.AsyncReport(-1, -1, 0, 0, 0, task_errors.task_error(failure[0])))
        return reports, run_seconds


def _async_run(updater: Updater, server: async_service.ParameterServer, check) -> tuple[list[dict],
                                                                                      update.TrainState, float]:
    """The asynchronous coordinator's run (``one_job.Coordination.run``), in this process or in the job: until the
    budget is spent. (the updates' records, the final state, seconds)"""
    started = time.perf_counter()
    while not server.done.wait(POLL_SECONDS):
        check()
    return updater.history, updater.state, time.perf_counter() - started


def _resumable(state: update.TrainState, fresh: update.TrainState, shards: int) -> update.TrainState:
    """``state`` if an asynchronous run of ``shards`` shards over the same model can go on from it, else ConfigError."""
    if state.positions is None:
        raise ConfigError("state: it is a synchronous run's (no shard positions): the asynchronous mode cannot "
                          "resume it")
    if len(state.positions) != shards:
        raise ConfigError(f"state: it has the positions of {len(state.positions)} shards, this run has {shards} "
                          f"workers")
    for name in ("params", "velocity"):
        if getattr(state, name).shape != getattr(fresh, name).shape:
            raise ConfigError(f"state: {name} of shape {getattr(state, name).shape}, the model has "
                              f"{getattr(fresh, name).shape}")
    return state

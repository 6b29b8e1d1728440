"""The Spark trainers' shared part (``SparkTrainer``) and the synchronous trainer, on the driver, with two engines.

- per-step (``fit``, ``fit_data``): each step broadcasts the parameters (with the step's batch indices), runs
  ``tasks.step_task`` in ``mapPartitions`` over an RDD of one partition per shard, made once per fit, and adds the
  ``GradientSum``s with ``treeReduce`` for ``training.fit_loop`` (with backup workers the step is
  ``backup.BackupStep``). The uint8 training set is broadcast once per ``fit`` and kept by the reused Python workers;
  a warm-up job readies those workers while data is staged.
- one-job (``fit_frame``; the only one on Spark Connect): one Spark job of long-lived tasks, each holding its shard,
  around a coordinator of parameter versions in this process (``cluster.one_job``); ``training.fit_loop`` publishes
  each version and takes the sum of its first N pushes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
import time
from functools import partial
from operator import add

import numpy as np

from mnist_lenet_spark.cluster.async_service import ParameterServer
from mnist_lenet_spark.cluster.backup import BackupStep
from mnist_lenet_spark.cluster import one_job, probe, staging, task_errors
from mnist_lenet_spark.config import BackupConfig, ConfigError, SGDConfig, split_options
from mnist_lenet_spark.executor import inference, rows, tasks
from mnist_lenet_spark.executor.async_task import ShardBatches
from mnist_lenet_spark.executor.one_job import JobPlan
from mnist_lenet_spark.executor.emulation import EmulatedCompute
from mnist_lenet_spark.executor.shards import StagedShards
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.loop import sharding, training, update
from mnist_lenet_spark import models, spark_conf
from mnist_lenet_spark.models import base
from mnist_lenet_spark.session import session  # noqa: F401  (the README's ``msp.session``)

log = logging.getLogger(__name__)


class SparkTrainer:
    """What the Spark trainers share (``SyncSGD``; ``async_sgd.AsyncSGD``): the session's checks, the model, the
    settings, the warm-up job, arrays broadcast once per fit, and validation over the cluster. A trainer adds
    ``fit_data`` and says how many shards it trains (``shards``). Parameters:

    spark : SparkSession (classic or Spark Connect: then only ``fit_frame`` trains) or SparkContext
    workers : gradient tasks (shards) of the trainer
    config : an ``SGDConfig`` (SystemML's schedule by default), run as ``config.scaled_for(examples_per_update /
        batch_size, lr_scaling)``
    model : any ``models.base.Model``; LeNet by default
    straggler : a ``straggler.StragglerModel`` that delays tasks, for experiments
    emulation : an ``emulation.EmulatedCompute``: tasks sleep a drawn time instead of computing (benchmarks)
    **options : any ``SGDConfig`` field (``batch_size=64, seed=0, lr=0.01, ...``); they override ``config``
    """
    finish_seconds = 30.0  # once a long-task job's run is over, how long its tasks get to end before Spark cancels them

    def __init__(self, spark, workers: int = 2, *, config: SGDConfig | None = None, model: base.Model | None = None,
                 straggler: StragglerModel | None = None, lr_scaling: str = "none",
                 emulation: EmulatedCompute | None = None, **options):
        if type(workers) is not int or workers < 1:
            raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
        unknown = set(options) - {f.name for f in dataclasses.fields(SGDConfig)}
        if unknown:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        config = dataclasses.replace(config or SGDConfig(), **options)
        self.workers = workers
        self.config = config.scaled_for(self._batches_per_update(), lr_scaling)
        self.connect = one_job.is_connect(spark)
        self.spark = spark if hasattr(spark, "conf") else None  # a session (None: a SparkContext was given)
        self.sc = None if self.connect else getattr(spark, "sparkContext", spark)
        if self.sc is not None:
            spark_conf.check(self.sc)  # a session not made by session(): one warning per SparkContext
        probe.check_executors(spark if self.connect else self.sc)  # executors without the package: one line
        self.model = model if model is not None else models.network_from("lenet")
        self.straggler = straggler if straggler is not None and straggler.active else None
        if self.straggler:
            self.straggler.check_partitions(self.shards)
        if emulation is not None:
            emulation.check()
        self.emulation = emulation
        self.threads = int(self._conf().get("spark.task.cpus", "1"))
        self._warm_up: tuple[threading.Thread, float] | None = None  # (job thread, when it started)
        self.warm_pids: list[int] = []  # the Python workers the last warm-up readied

    @property
    def shards(self) -> int:
        """The shards the training set is split into: one task each."""
        return self.workers

    def _batches_per_update(self) -> int:
        """How many mini-batches of ``batch_size`` one update applies (``lr_scaling``'s rule): one per worker."""
        return self.workers

    def _context(self, spec: base.ParamSpec, dropout: bool = False) -> tasks.TaskContext:
        return tasks.TaskContext(self.model, spec, self.threads, dropout, self.straggler, self._max_attempts(),
                                 self.emulation)

    def _conf(self):
        """The settings, read with ``.get(key, default)``: the SparkContext's, or a Connect session's."""
        return self.spark.conf if self.connect else self.sc.getConf()

    def task_slots(self) -> int | None:
        """Tasks a classic session runs at once (None on Spark Connect: asking costs a job there)."""
        return None if self.connect else one_job.task_slots(self.spark_session())

    @property
    def master(self) -> str:
        return self._conf().get("spark.master", "")

    def spark_session(self):
        """A SparkSession of the trainer's Spark (the one-job engine's DataFrames)."""
        if self.spark is None:
            from pyspark.sql import SparkSession
            self.spark = SparkSession(self.sc)
        return self.spark

    def _max_attempts(self) -> int:
        """How often Spark runs a failing task: F of local[N,F] (local masters: 1), else spark.task.maxFailures (4)."""
        master = self._conf().get("spark.master", "local")
        if master == "local" or master.startswith("local["):  # local-cluster[...] retries as a cluster does
            found = re.fullmatch(r"local\[[^,\]]+,\s*(\d+)\]", master)
            return int(found.group(1)) if found else 1
        return int(self._conf().get("spark.task.maxFailures", "4"))

    def start_warm_up(self, source: tasks.BroadcastData | StagedShards | None = None, *,
                      since: float | None = None) -> None:
        """Ready the Python workers in the background (``tasks.warm_task``: imports, BLAS, the allocator, the
        path of a step and, given ``source``, the data), overlapping what the driver does next (staging a
        DataFrame); the next fit waits for it before its first step, and counts its setup from ``since``
        (a ``time.perf_counter()``; default now)."""
        if self._warm_up is not None:
            return
        from pyspark import InheritableThread  # keeps the job's thread paired with a JVM thread
        params = self.model.init_params(0)
        spec = base.param_spec(params)
        ctx = self._context(spec)
        shards = self.shards

        def run():
            self.sc.setJobDescription("warm-up: Python workers")
            bc = self.sc.broadcast(base.flatten(params, spec))
            try:
                report = self.sc.parallelize(range(shards), shards).mapPartitions(
                    partial(tasks.warm_task, ctx, source, bc, self.config.batch_size)).treeReduce(add)
                self.warm_pids = sorted(set(report.pids))
            except Exception as e:  # only an optimisation: a real problem shows again in the first step
                log.warning("warm-up job failed: %s", task_errors.task_error(e))
            finally:
                if self.sc._jsc is not None:  # not stopped meanwhile
                    bc.destroy(blocking=False)
        thread = InheritableThread(target=run, daemon=True)
        self._warm_up = (thread, time.perf_counter() if since is None else since)
        thread.start()

    def _finish_warm_up(self) -> float:
        """Wait for the warm-up, if one was started; seconds since it started (0 if none was)."""
        if self._warm_up is None:
            return 0.0
        thread, started = self._warm_up
        thread.join()
        self._warm_up = None
        return time.perf_counter() - started

    @contextlib.contextmanager
    def _broadcast(self, value):
        """A broadcast of ``value``, destroyed on leaving (or the executors fill up with old parameters)."""
        bc = self.sc.broadcast(value)
        try:
            yield bc
        finally:
            bc.destroy(blocking=False)

    def _fit_config(self, epochs: int | None, max_steps: int | None) -> SGDConfig:
        return dataclasses.replace(self.config, epochs=epochs or self.config.epochs,
                                   max_steps=max_steps or self.config.max_steps)

    def fit(self, X_train: np.ndarray, y_train: np.ndarray, epochs: int | None = None, validation_data=None, *,
            max_steps: int | None = None, on_step=None, state: update.TrainState | None = None,
            checkpoint=None, checkpoint_every: int = 0, pixel_range: str | None = None) -> training.FitResult:
        """Train on images ``X_train`` (N, ...) of the model's C x H x W pixels each (MNIST: (N, 28, 28); else
        (N, C, H, W) or (N, C*H*W), channel-major) and labels ``y_train`` (N,). Pixels are uint8 0..255; numbers of
        another dtype need ``pixel_range``: '0..255' (whole numbers) or '0..1' (multiples of 1/255); anything else is a
        ConfigError naming the argument, its dtype and its values (never rescaled or rounded). ``epochs`` and
        ``max_steps`` override the config's. ``validation_data``: (images, labels), images as ``X_train``, evaluated
        over the cluster every ``validate_every`` steps and at each epoch's end. ``state`` resumes from a checkpoint;
        ``checkpoint(state)`` is called every ``checkpoint_every`` steps."""
        X_train = rows.model_pixels(self.model, X_train, "X_train", pixel_range)
        if validation_data is not None:
            validation_data = (rows.model_pixels(self.model, validation_data[0], "validation_data images",
                                                 pixel_range), np.asarray(validation_data[1], np.int64))
        started = time.perf_counter()
        data_bc = self.sc.broadcast((np.ascontiguousarray(X_train), np.asarray(y_train, np.int64)))
        # reads it while the driver broadcasts the validation set; the setup includes the broadcast
        self.start_warm_up(tasks.BroadcastData(data_bc), since=started)
        val_bc = self.sc.broadcast(validation_data) if validation_data is not None else None
        try:
            return self.fit_data(tasks.BroadcastData(data_bc), len(y_train), epochs,
                                 tasks.BroadcastData(val_bc) if val_bc else None, max_steps=max_steps, on_step=on_step,
                                 state=state, checkpoint=checkpoint, checkpoint_every=checkpoint_every)
        finally:
            data_bc.destroy(blocking=False)
            if val_bc:
                val_bc.destroy(blocking=False)

    def _evaluate(self, spec, source, flat, chunk: int = 1000) -> dict[str, float]:
        """{accuracy, loss} on the validation data (broadcast or staged), counted over the cluster; the loss is the
        mean cross-entropy in inference mode, without the L2 term."""
        sizes = source.sizes()
        self.sc.setJobDescription("validation")
        with self._broadcast(flat) as bc:
            correct, loss_sum = source.ranges(self.sc, self.workers, chunk).mapPartitions(
                partial(inference.correct_and_loss_task, self._context(spec), source, bc)).sum()
        count = sum(n for _, n in sizes)
        return {"accuracy": float(correct) / count, "loss": float(loss_sum) / count}

    def predict(self, params: base.Params, images: np.ndarray, pixel_range: str | None = None) -> np.ndarray:
        """Classes (N,) that ``params`` give ``images`` (N, ...) (uint8, or numbers in a declared ``pixel_range``, as
        ``fit``), on the driver in batches of 500."""
        images = rows.model_pixels(self.model, images, "images", pixel_range)
        return np.argmax(inference.predict_images(self.model, params, images), axis=1)

    def accuracy(self, params: base.Params, images: np.ndarray, labels: np.ndarray,
                 pixel_range: str | None = None) -> float:
        """Accuracy of ``params`` on ``images`` (N, ...) of C x H x W pixels each (uint8, or numbers in a declared
        ``pixel_range``, as ``fit``), counted over the cluster."""
        images = rows.model_pixels(self.model, images, "images", pixel_range)
        spec = base.param_spec(params)
        with self._broadcast((images, np.asarray(labels))) as bc:
            return self._evaluate(spec, tasks.BroadcastData(bc), base.flatten(params, spec))["accuracy"]

    def fit_frame(self, df, validation=None, features_col: str = "features", label_col: str = "label",
                  pixel_range: str = "0..255", *, epochs: int | None = None, max_steps: int | None = None, on_step=None,
                  state: update.TrainState | None = None, checkpoint=None, checkpoint_every: int = 0,
                  start_seconds: float = 120.0, stall_seconds: float = 600.0,
                  coordinator: str = "auto") -> training.FitResult:
        """Train on DataFrame rows with the one-job engine: one Spark job of long-lived tasks, each holding its shard
        (cut as staging cuts it), around a coordinator of parameter versions; DataFrame operations only, so a Spark
        Connect session trains as a classic one. Features and labels as staging reads them (``pixel_range``; a bad
        row is a DataError naming it). ``validation``: rows of the same columns (brought to this process) or
        (images, labels) as ``fit``'s, evaluated by the coordinator (the job holds the task slots). Every shard's
        task must start within ``start_seconds``; the run fails when nothing arrives for ``stall_seconds``.

        ``coordinator`` (``one_job.COORDINATOR_PLACES``): 'client' runs it in this process, 'cluster' in one more
        task of the job (for a Spark Connect client the executors cannot reach); 'auto' tries whether they reach
        this process. In the cluster, ``on_step`` sees the steps once the job has ended, and only the final
        checkpoint is written (``checkpoint_every`` must be 0). The rest as ``fit``."""
        config = self._fit_config(epochs, max_steps)
        model = self.model
        spark = self.spark_session()
        staging.check_columns(df, features_col, label_col, int(np.prod(model.input_shape)), model.classes)
        place = one_job.place_of(spark, coordinator)
        slots = one_job.task_slots(spark) if place == "cluster" else None
        if slots is not None and slots < self.shards + 1:  # else Spark waits minutes before it refuses
            raise ConfigError(f"the training job needs {self.shards + 1} task slots at once (one long task per "
                              f"shard and the coordinator's, in barrier mode); the cluster has {slots}: give it "
                              f"more, or fewer workers")
        if place == "cluster" and checkpoint is not None and checkpoint_every:
            raise ConfigError(f"checkpoint every {checkpoint_every} steps: with the coordinator in the cluster only "
                              f"the final checkpoint is written (a task cannot reach this machine's folder); set 0")
        frame, count = one_job.shard_frame(df, features_col, label_col, self.shards, int(place == "cluster"))
        config.check_data(count, self.shards)
        walk = ShardBatches(count, self.shards, config.batch_size, config.seed)
        plan = JobPlan(features_col, label_col, tuple(model.input_shape), model.classes, pixel_range, walk,
                       synchronous=isinstance(self, SyncSGD))
        spec, fresh = update.new_state(model, config.seed)
        evaluate = None  # the validation rows, with the coordinator: the job holds every task slot
        if isinstance(validation, tuple):
            images = rows.model_pixels(model, validation[0], "validation images", pixel_range)
            evaluate = partial(_evaluate_here, model, spec, images, np.asarray(validation[1], np.int64))
        elif validation is not None:
            evaluate = partial(_evaluate_here, model, spec, *one_job.collect_rows(validation, plan))
        ctx = self._context(spec, config.dropout)
        here = place == "client"
        coordination, finish = self._coordination(config, spec, fresh, state, count, evaluate,
                                                  on_step if here else None, checkpoint if here else None,
                                                  checkpoint_every)
        if here:
            outcome, reports = one_job.run_here(spark, frame, ctx, plan, coordination, start_seconds=start_seconds,
                                                stall_seconds=stall_seconds, finish_seconds=self.finish_seconds)
        else:
            outcome, reports = one_job.run_in_cluster(spark, frame, ctx, plan, coordination,
                                                      stall_seconds=stall_seconds, attempts=self._max_attempts())
        result = finish(outcome, reports)
        if not here and on_step is not None:  # the steps, as they went, now that they have reached this process
            for record in result.history:
                on_step(record)
        return result

    def _coordination(self, config, spec, fresh, state, count, evaluate, on_step, checkpoint, checkpoint_every):
        """(the coordinator's side of a one-job fit, finish(outcome, task reports) -> the fit's result)."""
        raise NotImplementedError


def _sync_run(model, spec, state, count, shards, config, evaluate, on_step, checkpoint, checkpoint_every,
              server: ParameterServer, check) -> training.FitResult:
    """The synchronous coordinator's run (``one_job.Coordination.run``), in this process or in the job."""
    return training.fit_loop(model, spec, state, count, shards, partial(one_job.kept_sum, server, check, shards),
                             config, evaluate, on_step, checkpoint, checkpoint_every)


def _evaluate_here(model: base.Model, spec: base.ParamSpec, images: np.ndarray, labels: np.ndarray,
                   flat: np.ndarray) -> dict[str, float]:
    """{accuracy, loss} of parameters (P,) on uint8 ``images`` (n, C, H, W) and ``labels`` (n,), in this process."""
    correct, loss_sum = inference.correct_and_loss(model, base.unflatten(flat, spec), images, labels)
    return {"accuracy": correct / len(labels), "loss": loss_sum / len(labels)}


class SyncSGD(SparkTrainer):
    """Synchronous SGD over ``workers`` Spark tasks per step; effective batch = batch_size x workers. Takes
    ``SparkTrainer``'s parameters (``lr_scaling``: "linear" multiplies lr by workers x batch_size / 64; pair it with
    warmup_steps) and:

    backup : a ``BackupConfig`` (no backup workers by default)
    **options : also ``backup_workers``, ``backup_mode``, ``backup_grace``, ``backup_cancel``, ``backup_signal``,
        ``backup_combine`` (the ``BackupConfig`` fields); they override ``backup``.
    """

    def __init__(self, spark, workers: int = 2, *, backup: BackupConfig | None = None, **options):
        _, backup_options, _ = split_options(options)
        rest = {k: v for k, v in options.items()  # SparkTrainer's, checked there
                if not (k.startswith("backup_") and k[len("backup_"):] in backup_options)}
        self.backup = dataclasses.replace(backup or BackupConfig(), **backup_options)
        super().__init__(spark, workers, **rest)

    @property
    def shards(self) -> int:
        return self.workers + self.backup.workers

    def gradient(self, params: base.Params, X: np.ndarray, y: np.ndarray) -> tuple[float, base.Params]:
        """Loss and gradients of one scaled batch X (n, C, H, W), y (n,) split over the workers, without dropout.
        For a model without state it equals ``model.loss_and_grads(params, X, y, train=False,
        l2=self.config.l2)``. A model with state (batch norm) computes in training mode on each worker's part:
        each part is normalised with its own batch statistics, whose example-weighted mean is in the STATE slots;
        so it equals ``train=True`` on the whole batch only with one worker. Keeps the dtype of params."""
        if len(y) == 0 or len(X) != len(y):
            raise ConfigError(f"gradient needs a non-empty batch with one label per example, "
                              f"got {len(X)} examples and {len(y)} labels")
        spec = base.param_spec(params)
        flat = base.flatten(params, spec)  # (P,)
        parts = [(X[a:b], y[a:b]) for a, b in sharding.shard_bounds(len(y), self.workers) if b > a]
        with self._broadcast(flat) as bc:
            report = self.sc.parallelize(parts, len(parts)).mapPartitions(
                partial(tasks.given_batch_task, self._context(spec), bc)).treeReduce(add)
        loss, grad = update.loss_and_gradient(report.sums, flat, spec, self.model, self.config.l2)
        return loss, base.unflatten(grad, spec)

    def fit_data(self, source: tasks.BroadcastData | StagedShards, num_examples: int,
                 epochs: int | None = None, validation: tasks.BroadcastData | StagedShards | None = None, *,
                 max_steps: int | None = None, on_step=None, state: update.TrainState | None = None,
                 checkpoint=None, checkpoint_every: int = 0) -> training.FitResult:
        """``fit`` on data already on the executors: broadcast arrays, or shards staged from a DataFrame.
        ``FitResult.setup_seconds``: from the start of the warm-up (``start_warm_up``; ``fit`` counts from its
        broadcast of the data) to the first step; steps are timed apart from it."""
        config = self._fit_config(epochs, max_steps)
        shards = self.shards
        try:  # whatever fails before the first step, no warm-up job outlives the call
            config.check_data(num_examples, shards)
            self.start_warm_up()  # unless fit or fit_dataframes started it already
            spec, fresh = update.new_state(self.model, config.seed)
            state = self._sync_state(state, fresh)
            total = config.total_steps(num_examples, shards)

            def describe(key: sharding.TaskKey) -> str:
                return f"step {key.step + 1}/{total}, epoch {key.epoch + 1}"

            ctx = self._context(spec, config.dropout)
            if self.backup.workers:
                gradient = BackupStep(self.sc, ctx, source, self.workers, self.backup, describe,
                                      gradient_bytes=state.params.nbytes)
            else:  # one partition per shard, holding its number: made once, used by every step
                gradient = partial(self._step, ctx, source, describe, source.partitions(self.sc, shards))
        finally:
            setup_seconds = self._finish_warm_up()
        try:
            result = training.fit_loop(self.model, spec, state, num_examples, shards, gradient, config,
                                       partial(self._evaluate, spec, validation) if validation else None, on_step,
                                       checkpoint, checkpoint_every)
            result.setup_seconds = setup_seconds
        finally:
            if self.backup.workers:
                gradient.close()
        if self.backup.workers:
            result.late_tasks = gradient.late_tasks()
        return result

    def _coordination(self, config, spec, fresh, state, count, evaluate, on_step, checkpoint, checkpoint_every):
        """``fit_loop`` publishes each version and takes the sum of its first N pushes (``one_job.kept_sum``)."""
        state = self._sync_state(state, fresh)
        options = {"params": state.params, "apply": None, "budget": config.total_steps(count, self.shards),
                   "partitions": self.shards, "keep": self.workers, "version": -1}
        run = partial(_sync_run, self.model, spec, state, count, self.shards, config, evaluate, on_step, checkpoint,
                      checkpoint_every)

        def finish(outcome: one_job.Outcome, reports: list) -> training.FitResult:
            if outcome.error is not None:
                raise outcome.error
            result = outcome.value
            result.late_tasks, result.tasks = {"refused_late": outcome.refused["late"]}, reports
            return result
        return one_job.Coordination(options, run), finish

    @staticmethod
    def _sync_state(state: update.TrainState | None, fresh: update.TrainState) -> update.TrainState:
        if state is not None and state.positions is not None:
            raise ConfigError("state: it is an asynchronous run's (AsyncSGD): a synchronous run cannot resume it")
        return state or fresh

    def _step(self, ctx, source, describe, shard_rdd, flat, batches):
        self.sc.setJobDescription(describe(batches[0].key))
        t0 = time.perf_counter()
        with self._broadcast((flat, batches)) as bc:
            try:
                report = shard_rdd.mapPartitions(partial(tasks.step_task, ctx, source, bc)).treeReduce(add)
            except Exception as e:  # Spark gave up on a task (it retried up to its max attempts)
                if "Py4J" not in type(e).__name__ and "PythonException" not in type(e).__name__:
                    raise
                raise task_errors.StepFailure(f"step {batches[0].key.step + 1}: a gradient task failed for good: "
                                              f"{task_errors.task_error(e)}") from None
        return report.sums, {"step_seconds": time.perf_counter() - t0, "pids": sorted(report.pids),
                             "task_seconds": max(report.seconds), "each_task_seconds": list(report.seconds)}

"""One fit, as the job (``jobs.runs``) and the estimator (``ml``) both run it: the settings checked once (each
refusal worded once, in the caller's own spelling of the setting), the trainer of the mode, the validation rows,
where the fit starts (a checkpoint, a model's weights), checkpoints, the fit from arrays or from DataFrame rows,
its figures, and what MLflow gets. The job and the estimator turn their flags or Params into a ``FitPlan``; what
they make of the result (a summary file, a fitted model) stays theirs.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from mnist_lenet_spark import models, tracking
from mnist_lenet_spark.async_sgd import AsyncSGD
from mnist_lenet_spark.cluster import one_job, staging
from mnist_lenet_spark.config import BackupConfig, ConfigError, SGDConfig
from mnist_lenet_spark.data import DataError
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.loop import checkpoint, training, update
from mnist_lenet_spark.models import base
from mnist_lenet_spark.spark import SyncSGD

log = logging.getLogger(__name__)
MODES = ("sync", "async")
ENGINES = ("auto", "per-step", "one-job")  # auto: one-job on Spark Connect, else per-step


@dataclass(frozen=True)
class Spelling:
    """How a caller's users write a setting: the job's flags (``--backup-workers``) or the estimator's Params
    (``backupWorkers``)."""
    flags: bool

    def __call__(self, key: str) -> str:
        if key in ("data", "model"):
            return {"data": "training data", "model": "model"}[key]
        if self.flags:
            return "--" + key.replace("_", "-")
        first, *rest = key.split("_")
        return first + "".join(word.title() for word in rest)


FLAGS, PARAMS = Spelling(flags=True), Spelling(flags=False)


@dataclass(frozen=True)
class FitPlan:
    """What to train and how, whoever asks."""
    network: base.Model
    model: str  # the network as the caller named it (a preset, a definition, a path): tracking and checkpoints
    workers: int = 2
    mode: str = "sync"  # MODES: SyncSGD or AsyncSGD
    config: SGDConfig = SGDConfig()
    backup: BackupConfig = BackupConfig()
    lr_scaling: str = "none"
    straggler: StragglerModel = StragglerModel()
    max_staleness: int | None = None  # the asynchronous mode's; None: off
    spelling: Spelling = PARAMS
    engine: str = "auto"  # ENGINES: how DataFrame rows train (arrays train per step)
    coordinator: str = "auto"  # one_job.COORDINATOR_PLACES: where the one-job engine's coordinator runs
    checkpoint_dir: str | Path | None = None  # checkpoint.npz goes there
    checkpoint_every: int = 0  # steps (0: only at the end)
    data: str | None = None  # what a checkpoint records of the training data (a resumed run must have the same)

    @property
    def checkpoint(self) -> Path | None:
        return Path(self.checkpoint_dir) / "checkpoint.npz" if self.checkpoint_dir else None

    @property
    def trainer_config(self) -> SGDConfig:
        """``config`` as the trainer runs it: its lr scaled (``lr_scaling``) for the examples of one update."""
        return self.config.scaled_for(self.workers if self.mode == "sync" else 1, self.lr_scaling)


def check(plan: FitPlan) -> None:
    check_mode(plan.mode, plan.backup, plan.config, plan.max_staleness, plan.spelling)
    if plan.engine not in ENGINES:
        raise ConfigError(f"{plan.spelling('engine')}: must be one of {', '.join(ENGINES)}, got {plan.engine!r}")
    if plan.coordinator not in one_job.COORDINATOR_PLACES:
        raise ConfigError(f"{plan.spelling('coordinator')}: must be one of {', '.join(one_job.COORDINATOR_PLACES)}, "
                          f"got {plan.coordinator!r}")


def check_engine(plan: FitPlan, connect: bool, slots: int | None = None, staging_dir: str | None = None) -> str:
    """The engine that trains ``plan`` on a session (Spark Connect or not, with ``slots`` task slots), or a
    ConfigError in the caller's spelling for a setting it has no use for (refused, never ignored). 'auto' is the
    one-job engine, the faster (docs/benchmarks.md), unless the fit asks for what only the per-step engine does
    (``staging_dir``, backup_mode wait-all, backup_combine executors) or a classic session has fewer task slots than
    the one-job engine runs tasks at once: then per-step."""
    engine, default = plan.engine, BackupConfig()
    if engine == "auto":
        tasks = plan.workers + (plan.backup.workers if plan.mode == "sync" else 0) + (plan.coordinator == "cluster")
        per_step_only = (staging_dir or plan.backup.mode != default.mode or plan.backup.combine != default.combine
                         or (slots is not None and slots < tasks))
        engine = "per-step" if per_step_only and not connect else "one-job"
    if engine == "per-step" and connect:
        raise ConfigError(f"{plan.spelling('engine')} per-step: a Spark Connect session has no SparkContext to run a "
                          f"job a step on; use one-job (or auto)")
    if engine == "per-step" and plan.coordinator != "auto":
        raise ConfigError(f"{plan.spelling('coordinator')} {plan.coordinator}: only the one-job engine has a "
                          f"coordinator (the per-step engine's driver adds each step's gradients); leave it auto")
    for key, why in (("mode", "keeps the first N pushes of each version"), ("combine", "adds them in the driver")):
        if engine == "one-job" and getattr(plan.backup, key) != getattr(default, key):
            raise ConfigError(f"{plan.spelling('backup_' + key)} {getattr(plan.backup, key)!r}: the one-job engine "
                              f"{why}; leave it {getattr(default, key)!r}")
    return engine


def check_mode(mode: str, backup: BackupConfig, config: SGDConfig, max_staleness: int | None, name: Spelling) -> None:
    """ConfigError, in the caller's spelling, when the mode is unknown or is asked for what it does not do
    (refused, never ignored)."""
    if mode not in MODES:
        raise ConfigError(f"{name('mode')}: must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "sync":
        if max_staleness is not None:
            raise ConfigError(f"{name('max_staleness')} {max_staleness}: only the asynchronous mode "
                              f"({name('mode')} async) has stale gradients; leave it unset")
        return
    if backup.workers:
        raise ConfigError(f"{name('backup_workers')} {backup.workers}: the asynchronous mode ({name('mode')} "
                          f"async) has no steps to drop stragglers from; set 0")
    default = BackupConfig()
    for key in ("mode", "combine"):
        if getattr(backup, key) != getattr(default, key):
            raise ConfigError(f"{name('backup_' + key)} {getattr(backup, key)!r}: the asynchronous mode "
                              f"({name('mode')} async) has no backup workers; leave it {getattr(default, key)!r}")
    if config.early_stopping_patience:
        raise ConfigError(f"{name('early_stopping_patience')} {config.early_stopping_patience}: the asynchronous "
                          f"mode ({name('mode')} async) validates once, at the end; set 0")
    if config.validate_every:  # conf/training.json's default; the job's flag is refused by its parser
        log.info("validate_every %d does not apply in the asynchronous mode: it validates once, at the end",
                 config.validate_every)


def trainer(spark, plan: FitPlan) -> SyncSGD | AsyncSGD:
    """The trainer of ``plan``'s mode (after ``check``)."""
    options = {"config": plan.config, "straggler": plan.straggler, "lr_scaling": plan.lr_scaling, "model": plan.network}
    if plan.mode == "sync":
        return SyncSGD(spark, plan.workers, backup=plan.backup, **options)
    try:
        return AsyncSGD(spark, plan.workers, max_staleness=plan.max_staleness, **options)
    except ConfigError as e:
        if str(e).startswith("max_staleness "):
            raise ConfigError(f"{plan.spelling('max_staleness')}: {str(e)[len('max_staleness '):]}") from None
        raise


def split_validation(rows, column: str, name: str):
    """(training rows, validation rows) of a DataFrame: a row is a validation row when its boolean ``column`` is
    true (null: false); DataError naming ``name`` (how the caller sets the column) when there is no such column."""
    from pyspark.sql import functions as F
    if column not in rows.columns:
        raise DataError(f"{name}: column '{column}' not found; the data has {', '.join(rows.columns)}")
    is_validation = F.coalesce(F.col(column).cast("boolean"), F.lit(False))
    return rows.filter(~is_validation), rows.filter(is_validation)


def checkpoint_settings(plan: FitPlan) -> dict:
    """What a checkpoint records of its fit, which a resumed fit must share to go on with the same schedule."""
    settings = {"mode": plan.mode, "seed": plan.config.seed, "batch_size": plan.config.batch_size,
                "workers": plan.workers, "backup_workers": plan.backup.workers,
                "model": models.fingerprint(plan.model, plan.network)}
    if plan.data is not None:
        settings["data"] = plan.data
    return settings


def start_state(plan: FitPlan, resume: bool = False,
                initial: tuple[str, base.Params] | None = None) -> update.TrainState | None:
    """Where the fit starts: the checkpoint of ``plan`` (``resume``), the weights of ``initial`` (where they come
    from, the weights), or None: the network's initialisation. ConfigError naming the file when they do not fit.
    Needs no Spark: a bad checkpoint is refused before Spark starts."""
    if resume:
        return checkpoint.resume_state(plan.checkpoint, checkpoint_settings(plan), plan.network, plan.trainer_config,
                                     plan.spelling)
    if initial is None:
        return None
    source, weights = initial
    state = checkpoint.warm_state(weights, plan.network, plan.config.seed, source)
    if plan.mode == "async":
        state.positions = [0] * plan.workers  # every shard from its start
    log.info("starting from the weights of %s", source)
    return state


class Arrays(NamedTuple):
    """Training data on the driver: uint8 images (N, ...) and labels (N,), and (images, labels) to validate on."""
    images: np.ndarray
    labels: np.ndarray
    validation: tuple[np.ndarray, np.ndarray] | None = None


class Frames(NamedTuple):
    """Training data as DataFrame rows, staged on the executors: ``staging.fit_dataframes``'s arguments, in order."""
    train: object  # DataFrame
    validation: object | None  # DataFrame, or None
    features_col: str = "features"
    label_col: str = "label"
    staging_dir: str | None = None
    pixel_range: str = "0..255"


@dataclass
class Fitted:
    result: training.FitResult
    staging_seconds: float
    train_seconds: float  # the fit's time less the staging
    figures: dict  # ``figures``


def run(sgd: SyncSGD | AsyncSGD, plan: FitPlan, source: Arrays | Frames, state: update.TrainState | None = None,
        on_step: Callable[[dict], None] | None = None) -> Fitted:
    """Train ``sgd`` on ``source`` from ``state``, writing ``plan``'s checkpoints (every ``checkpoint_every`` steps
    and at the end)."""
    path, save = plan.checkpoint, None
    if path is not None:
        for stale in path.parent.glob(path.name + ".*.tmp"):  # left by a run that was killed
            stale.unlink()
        settings = checkpoint_settings(plan)
        save = lambda st: checkpoint.save_checkpoint(path, st, sgd.config, settings)  # noqa: E731
    options = {"on_step": on_step, "state": state, "checkpoint": save, "checkpoint_every": plan.checkpoint_every}
    one_job_options = {**options, "coordinator": plan.coordinator}
    t0, staging_seconds = time.perf_counter(), 0.0
    engine = check_engine(plan, sgd.connect, sgd.task_slots(),
                          source.staging_dir if isinstance(source, Frames) else None)
    if engine == "one-job" and isinstance(source, Frames) and source.staging_dir:
        raise ConfigError(f"{plan.spelling('staging_dir')} {source.staging_dir}: the one-job engine stages nothing "
                          f"(each task holds its partition); leave it unset")
    if engine == "one-job" and isinstance(source, Arrays):
        rows = one_job.frame_of(sgd.spark_session(), source.images, source.labels)
        result = sgd.fit_frame(rows, source.validation, **one_job_options)
    elif isinstance(source, Arrays):
        result = sgd.fit(source.images, source.labels, validation_data=source.validation, **options)
    elif engine == "one-job":
        result = sgd.fit_frame(source.train, source.validation, source.features_col, source.label_col,
                               source.pixel_range, **one_job_options)
    else:
        result, staging_seconds = staging.fit_dataframes(sgd, *source, **options)
    train_seconds = time.perf_counter() - t0 - staging_seconds
    if save:  # the final state too, whatever the interval
        save(result.state)
    return Fitted(result, staging_seconds, train_seconds, figures(result, plan, sgd.config, staging_seconds))


def step_statistics(history: list[dict]) -> dict:
    """Step-time median, mean and p90 (seconds), examples, and dropped backup tasks of a run's history."""
    times = np.array([h["seconds"] for h in history]) if history else np.array([np.nan])
    return {"steps": len(history), "examples": sum(h["examples"] for h in history),
            "step_seconds_median": float(np.median(times)), "step_seconds_mean": float(np.mean(times)),
            "step_seconds_p90": float(np.percentile(times, 90)),
            "dropped_tasks": sum(len(h.get("dropped", [])) for h in history)}


def async_statistics(result) -> dict:
    """The asynchronous run's own figures (``async_sgd.AsyncFitResult``): staleness (mean, p90, max), updates/s
    from the job's start to the budget spent, the median apply time, pushes refused (by reason) and shards lost."""
    staleness = result.staleness_summary()
    applies = [h["seconds"] for h in result.history]
    return {"updates": len(result.history), "updates_per_second": result.updates_per_second,
            "run_seconds": result.run_seconds, "staleness_mean": staleness["mean"],
            "staleness_p90": staleness["p90"], "staleness_max": staleness["max"],
            "apply_seconds_median": float(np.median(applies)) if applies else None,
            "refused_pushes": dict(result.refused),  # by reason; "budget spent": in flight at the end
            "lost_shards": sorted(r.shard for r in result.tasks if r.ended not in ("budget", "superseded"))}


def figures(result: training.FitResult, plan: FitPlan, config: SGDConfig, staging_seconds: float) -> dict:
    """A fit's numbers, for a summary and for MLflow: steps and their times (a synchronous run's), the
    asynchronous run's own, early stopping's, the model's validation accuracy."""
    history = result.history
    found = {"mode": plan.mode, "final_loss": history[-1]["loss"] if history else None,
             "staging_seconds": staging_seconds, "setup_seconds": result.setup_seconds, **step_statistics(history),
             "validation_accuracy": result.params_validation_accuracy(config),  # the model's
             "late_tasks_stopped_by_signal": result.late_tasks.get("stopped_by_signal", 0),
             "late_tasks_killed_by_spark": result.late_tasks.get("killed_by_spark", 0)}
    if plan.mode == "async":  # an update's "seconds" is its apply, not a step: no step times
        for key in ("step_seconds_median", "step_seconds_mean", "step_seconds_p90", "dropped_tasks",
                    "late_tasks_stopped_by_signal", "late_tasks_killed_by_spark"):
            del found[key]
        found.update(async_statistics(result))
    if config.early_stopping_patience:  # the model is the best validation's
        found.update({"early_stopping_metric": config.early_stopping_metric, "stopped_early": result.stopped_early,
                      "stopped_step": result.stopped_step, "best_step": result.best_step,
                      "best_metric": result.best_metric})
    return found


# -- MLflow -------------------------------------------------------------------------------------------------------
def track_start(tracker: tracking.Tracker, plan: FitPlan, sgd: SyncSGD | AsyncSGD, **extra) -> None:
    """The fit's settings into the run (``extra``: the caller's own, such as where the data came from)."""
    tracker.log_training_params(sgd.config, plan.backup, plan.workers, plan.network, plan.model,
                                lr_scaling=plan.lr_scaling, mode=plan.mode, **extra)


def each(*hooks: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
    """One ``on_step`` calling, in order, each of ``hooks`` that is not None; None when none is."""
    hooks = [hook for hook in hooks if hook is not None]

    def on_step(record: dict) -> None:
        for hook in hooks:
            hook(record)
    return on_step if hooks else None


def track_result(tracker: tracking.Tracker, fitted: Fitted, plan: FitPlan, weights: base.Params, title: str,
                 pixel_range: str, summary: dict) -> None:
    """The fit's validations, final numbers (at its last step), plots and model (read in ``pixel_range``) into the
    run; ``summary`` gains the run's id and the model's URI."""
    result = fitted.result
    tracker.log_validation(result.validation)
    tracker.log_final(summary, step=result.history[-1]["step"] if result.history else 0)
    tracker.log_plots(result.history, result.validation, title)
    tracker.log_model(plan.network, weights, pixel_range)
    summary.update({"mlflow_run_id": tracker.run_id, "mlflow_model_uri": tracker.model_info.model_uri})


def track_end(tracker: tracking.Tracker, summary: dict, failure: BaseException | None) -> None:
    """The summary as JSON into the run, which ends (FAILED after ``failure``); an MLflow error after a failed fit
    is logged, not raised over the fit's own."""
    try:
        tracker.log_summary(summary)
    except Exception as e:
        if failure is None:
            tracker.fail(e)
            raise
        log.warning("MLflow: could not log the summary: %s", e)
    if failure is None:
        tracker.finish()
    else:
        tracker.fail(failure)


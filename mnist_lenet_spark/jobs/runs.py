"""A whole training run as ``jobs/train_lenet.py`` does it: data, session, resume, fit, test, outputs."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_lenet_spark import data, files, models, readers, tracking
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.cluster import staging
from mnist_lenet_spark.config import BackupConfig, ConfigError, SGDConfig, split_options
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.loop import training
from mnist_lenet_spark.progress import StepProgress

log = logging.getLogger(__name__)
MODES = ("sync", "async")


@dataclass(frozen=True)
class TrainRun:
    """One run: the training settings, and where the data comes from and the outputs go."""
    model: str = "lenet"  # models.NAMES, or the path of a network definition (.json)
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) of the train_path rows' images; None: the model's
    classes: int | None = None  # None: the model's (MNIST's 10 for a preset)
    config: SGDConfig = SGDConfig()
    backup: BackupConfig = BackupConfig()
    workers: int = 2
    mode: str = "sync"  # MODES: synchronous SGD (spark.SyncSGD) or asynchronous (async_sgd.AsyncSGD)
    lr_scaling: str = "none"
    straggler: StragglerModel = StragglerModel()
    master: str | None = None  # None: the one spark-submit chose, else local[*]
    spark_conf: str | os.PathLike | None = None  # a spark-defaults.conf; None: the checkout's
    data_dir: str | os.PathLike | None = None  # the four MNIST IDX files; None: the bundled copy
    train_path: str | None = None  # instead of data_dir: a Hadoop path read into a DataFrame (readers)
    test_path: str | None = None  # with train_path; for idx, default: the train_path folder
    data_format: str = "idx"  # of train_path and test_path: idx, csv or parquet
    staging_dir: str | None = None  # with train_path: a folder every executor mounts; None: executors' own disks
    pixel_range: str = "0..255"  # with train_path: of numeric features (executor.rows.PIXEL_RANGES)
    features_col: str = "features"  # with train_path (Parquet): the columns of the images and the labels
    label_col: str = "label"
    validation_fraction: float | None = None  # with train_path: validate on this fraction of the rows, or
    validation_col: str | None = None  # on the rows this boolean column marks; neither: the first 5,000 rows
    save_model: str | None = None  # the MLlib model directory (NetworkClassificationModel.save), any Hadoop path
    limit_train: int | None = None  # use the first N training images
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int = 0
    resume: bool = False
    metrics: str | os.PathLike | None = None  # one JSON object per step
    summary: str | os.PathLike | None = None  # one JSON object with the run's results
    model_out: str | os.PathLike | None = None  # the trained parameters, .npz
    progress: bool = True
    mlflow: bool = False  # log the run to MLflow (also when the caller has an MLflow run active)
    mlflow_experiment: str | None = None  # the MLflow experiment of the run (implies mlflow)


def check_mode(run: TrainRun) -> None:
    """ConfigError naming the setting when ``run`` asks the asynchronous mode for what it does not do (the flags
    are refused earlier, by the job's parser; this also catches conf/training.json)."""
    if run.mode not in MODES:
        raise ConfigError(f"--mode: must be one of {', '.join(MODES)}, got {run.mode!r}")
    if run.mode != "async":
        return
    if run.backup.workers:
        raise ConfigError(f"--backup-workers {run.backup.workers}: the asynchronous mode (--mode async) has no steps "
                          f"to drop stragglers from; give 0")
    if run.config.early_stopping_patience:
        raise ConfigError(f"--early-stopping-patience {run.config.early_stopping_patience}: the asynchronous mode "
                          f"(--mode async) validates once, at the end; give 0")
    if run.config.validate_every:  # conf/training.json's default: the flag itself is refused by the parser
        log.info("validate_every %d (conf/training.json) does not apply in --mode async: it validates once, at the "
                 "end", run.config.validate_every)


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


def step_statistics(history: list[dict]) -> dict:
    """Step-time median, mean and p90 (seconds), examples, and dropped backup tasks of a run's history."""
    times = np.array([h["seconds"] for h in history]) if history else np.array([np.nan])
    return {"steps": len(history), "examples": sum(h["examples"] for h in history),
            "step_seconds_median": float(np.median(times)), "step_seconds_mean": float(np.mean(times)),
            "step_seconds_p90": float(np.percentile(times, 90)),
            "dropped_tasks": sum(len(h.get("dropped", [])) for h in history)}


class MetricsLog:
    """``--metrics``: one JSON object per step, written and flushed as the step ends. On resume the lines
    past the checkpoint's step (written by the run that stopped after it) are dropped first."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None):
        path = Path(path)
        kept = []
        if resume_step is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= resume_step:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):  # a line cut short by a kill
                    break
        files.write_atomically(path, "".join(kept))
        self.file = open(path, "a")

    def write(self, record: dict) -> None:
        self.file.write(strict_json(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def strict_json(value, indent: int | None = None) -> str:
    """JSON without NaN or Infinity (which JSON does not have): non-finite numbers become null."""
    def clean(v):
        if isinstance(v, float) and not np.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(value), allow_nan=False, indent=indent, default=str)


def _resume_state(run: TrainRun, checkpoint: Path, shape: dict, network) -> training.TrainState:
    """The checkpoint's state, refused (ConfigError naming the file and the flag) if it does not continue this run."""
    config = run.config.scaled_for(run.workers if run.mode == "sync" else 1, run.lr_scaling)
    return training.resume_state(checkpoint, shape, network, config, flag_name)


def flag_name(key: str) -> str:
    """How the job spells a checkpoint's setting: ``batch_size`` is ``--batch-size``."""
    return {"data": "training data", "model": "model"}.get(key, "--" + key.replace("_", "-"))


def _data_fingerprint(labels: np.ndarray) -> str:
    """Which training set a checkpoint was written for: its size and a hash of its labels."""
    return f"{len(labels)} examples, labels sha256 {hashlib.sha256(labels.tobytes()).hexdigest()[:16]}"


def train(run: TrainRun) -> dict:
    """Train, test and write the outputs of ``run``; returns the summary. Errors in the data, the
    settings or a checkpoint raise DataError or ConfigError before Spark starts where possible; a
    diverging run raises training.DivergenceError. The summary (with ``status``) and the metrics
    are written also when the run stops on an error."""
    try:
        network = models.by_name(run.model, run.image_shape, run.classes)
    except ValueError as e:
        raise ConfigError(f"--model: {e}") from None
    if hasattr(network, "summary"):
        log.info("the network:\n%s", network.summary())
    if not run.train_path and (network.input_shape, network.classes) != (models.MNIST_SHAPE, models.MNIST_CLASSES):
        raise ConfigError("--image-shape/--classes: the bundled MNIST is 1,28,28 with 10 classes; give --train "
                          "data of that shape")
    check_mode(run)
    shards = run.workers + run.backup.workers
    run.straggler.check_partitions(shards)
    tracker = tracking.tracker(run.mlflow, "--mlflow" if run.mlflow else "--mlflow-experiment", run.mlflow_experiment)
    mnist = train_split = None
    if not run.train_path:
        mnist = data.load_mnist(run.data_dir)
        train_split = mnist.train
        if run.limit_train:
            train_split = data.Split(train_split.images[:run.limit_train], train_split.labels[:run.limit_train])
        run.config.check_data(len(train_split.labels), shards)
    # what a resumed run must share with its checkpoint, or it would not continue the same schedule
    shape = {"mode": run.mode, "seed": run.config.seed, "batch_size": run.config.batch_size, "workers": run.workers,
             "backup_workers": run.backup.workers, "model": models.identity(run.model, network),
             "data": _data_fingerprint(train_split.labels) if train_split is not None else run.train_path}
    checkpoint = Path(run.checkpoint_dir) / "checkpoint.npz" if run.checkpoint_dir else None
    if checkpoint:
        for stale in checkpoint.parent.glob(checkpoint.name + ".*.tmp"):  # left by a run that was killed
            stale.unlink()
    state = _resume_state(run, checkpoint, shape, network) if run.resume else None
    metrics = MetricsLog(run.metrics, state.step if state else None) if run.metrics else None
    history: list[dict] = []
    summary = {"status": "failed", "steps": 0}
    failure = None
    if tracker:
        try:
            tracker.start()
        except BaseException:
            if metrics:
                metrics.close()
            raise
    under_spark_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started the JVM and chose the master
    try:
        spark = msp.session(run.master or (None if under_spark_submit else "local[*]"), conf_file=run.spark_conf)
    except BaseException as e:
        if tracker:
            tracker.fail(e)
        raise
    try:
        from mnist_lenet_spark.ml import NetworkClassificationModel  # pyspark.ml: only once Spark runs
        if run.mode == "async":
            from mnist_lenet_spark.async_sgd import AsyncSGD
            sgd = AsyncSGD(spark, run.workers, config=run.config, straggler=run.straggler, lr_scaling=run.lr_scaling,
                           model=network)
        else:
            sgd = msp.SyncSGD(spark, run.workers, config=run.config, backup=run.backup, straggler=run.straggler,
                              lr_scaling=run.lr_scaling, model=network)
        config = sgd.config
        progress = StepProgress() if run.progress else None  # a bar on a terminal, else a log line now and then
        if tracker:
            tracker.log_training_params(config, run.backup, run.workers, network, run.model,
                                        lr_scaling=run.lr_scaling, data=shape["data"], mode=run.mode,
                                        resumed_from_step=state.step if state else 0,
                                        straggler_prob=run.straggler.prob, straggler_delay=run.straggler.delay)

        def on_step(record):
            history.append(record)
            if metrics:
                metrics.write(record)
            if progress is not None:
                progress.update(record)
            if tracker:
                tracker.on_step(record)

        save = (lambda st: training.save_checkpoint(checkpoint, st, config, shape)) if checkpoint else None
        fit_options = {"on_step": on_step, "state": state, "checkpoint": save,
                       "checkpoint_every": run.checkpoint_every}
        t0 = time.perf_counter()
        staging_seconds = 0.0
        if mnist is not None:
            result = sgd.fit(train_split.images, train_split.labels, validation_data=mnist.validation, **fit_options)
        else:
            from pyspark.sql import functions as F
            rows = readers.read_mnist(spark, run.train_path, run.data_format, "train")
            if run.validation_col:
                if run.validation_col not in rows.columns:
                    raise data.DataError(f"--validation-col: column '{run.validation_col}' not found; the data has "
                                         f"{', '.join(rows.columns)}")
                is_validation = F.coalesce(F.col(run.validation_col).cast("boolean"), F.lit(False))
            else:
                flagged = (readers.with_validation_fraction(spark, rows, run.validation_fraction, run.config.seed)
                           if run.validation_fraction else
                           readers.with_validation_flag(spark, rows, data.VALIDATION_SIZE))
                rows, is_validation = flagged, F.col("is_validation")
            result, staging_seconds = staging.fit_dataframes(sgd, rows.filter(~is_validation),
                                                             rows.filter(is_validation), run.features_col,
                                                             run.label_col, run.staging_dir, run.pixel_range,
                                                             **fit_options)
        train_seconds = time.perf_counter() - t0 - staging_seconds
        if progress is not None:
            progress.close()
        if save:  # the final state, whatever --checkpoint-every says
            save(result.state)
        model = NetworkClassificationModel(result.params, numClasses=network.classes)
        model._set(model=json.dumps(network.to_json()) if hasattr(network, "to_json") else run.model,
                   imageShape=list(network.input_shape),
                   featuresCol=run.features_col, labelCol=run.label_col,
                   pixelRange=run.pixel_range)
        if mnist is not None:
            test_accuracy = sgd.accuracy(result.params, mnist.test.images, mnist.test.labels)
        else:
            test_rows = readers.read_mnist(spark, run.test_path or run.train_path, run.data_format, "test")
            test_accuracy = readers.accuracy(model.transform(test_rows), label_col=run.label_col)
        if run.save_model:
            model.write().overwrite().save(str(run.save_model))
        stats = step_statistics(result.history)
        summary = {
            "status": "ok", "mode": run.mode, "model": run.model, "test_accuracy": test_accuracy,
            "validation_accuracy": result.params_validation_accuracy(config),
            "epochs": config.epochs, "workers": run.workers, "batch_size": config.batch_size,
            "backup_workers": run.backup.workers, "shards": shards, "train_seconds": train_seconds,
            "staging_seconds": staging_seconds, "setup_seconds": result.setup_seconds,
            "examples_per_second": stats["examples"] / train_seconds,
            "final_loss": result.history[-1]["loss"] if result.history else None,
            "late_tasks_stopped_by_signal": result.late_tasks.get("stopped_by_signal", 0),
            "late_tasks_killed_by_spark": result.late_tasks.get("killed_by_spark", 0),
            "spark_master": spark.sparkContext.master, **stats,
        }
        if run.mode == "async":  # an update's "seconds" is its apply, not a step: no step times
            for key in ("step_seconds_median", "step_seconds_mean", "step_seconds_p90", "dropped_tasks",
                        "late_tasks_stopped_by_signal", "late_tasks_killed_by_spark"):
                del summary[key]
            summary.update(async_statistics(result))
        if config.early_stopping_patience:  # test_accuracy and the model are the best validation's
            summary.update({"early_stopping_metric": config.early_stopping_metric,
                            "stopped_early": result.stopped_early, "stopped_step": result.stopped_step,
                            "best_step": result.best_step, "best_metric": result.best_metric})
        if tracker:
            _track_result(tracker, result, summary, network, f"{run.model}, {run.workers} + {run.backup.workers} "
                          f"workers, {spark.sparkContext.master}", run.pixel_range)
    except BaseException as e:  # the summary tells how the run ended, then the error goes on to the caller
        status = "diverged" if isinstance(e, training.DivergenceError) else "failed"
        summary = {"status": status, "mode": run.mode,
                   "error": str(e).splitlines()[0] if str(e) else type(e).__name__, **step_statistics(history)}
        if tracker:
            summary["mlflow_run_id"] = tracker.run_id
        failure = e
        raise
    finally:
        spark.stop()
        if metrics:
            metrics.close()
        if run.summary:
            files.write_atomically(run.summary, strict_json(summary, indent=2) + "\n")
        if tracker:
            _close_tracker(tracker, summary, failure)
    if run.model_out:
        buffer = io.BytesIO()
        np.savez(buffer, **result.params)
        files.write_atomically(run.model_out, buffer.getvalue())
    return summary


def _track_result(tracker: tracking.Tracker, result: training.FitResult, summary: dict, network,
                  title: str, pixel_range: str) -> None:
    """The fit's validations, final numbers (at the last step), plots and model into the MLflow run."""
    tracker.log_validation(result.validation)
    last = result.history[-1]["step"] if result.history else 0
    tracker.log_final(summary, step=last)
    tracker.log_plots(result.history, result.validation, title)
    tracker.log_model(network, result.params, pixel_range)
    summary.update({"mlflow_run_id": tracker.run_id, "mlflow_model_uri": tracker.model_info.model_uri})


def _close_tracker(tracker: tracking.Tracker, summary: dict, failure: BaseException | None) -> None:
    """The summary as JSON into the MLflow run, which ends (FAILED after ``failure``); an MLflow error after a
    failed fit is logged, not raised over the fit's own."""
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


def with_flags(run: TrainRun, **flags) -> TrainRun:
    """``run`` with the non-None ``flags`` set: ``TrainRun`` fields, ``SGDConfig`` fields, or
    ``backup_`` + a ``BackupConfig`` field."""
    sgd, backup, rest = split_options({k: v for k, v in flags.items() if v is not None})
    return dataclasses.replace(run, config=dataclasses.replace(run.config, **sgd),
                               backup=dataclasses.replace(run.backup, **backup), **rest)

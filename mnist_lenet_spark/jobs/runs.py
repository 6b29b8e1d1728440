"""A whole training run as ``jobs/train_lenet.py`` does it: data, session, resume, fit, test, outputs."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_lenet_spark import data, files, fit, models, readers, tracking
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.config import BackupConfig, ConfigError, SGDConfig, split_options
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.loop import update
from mnist_lenet_spark.progress import StepProgress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRun:
    """One run: the training settings, and where the data comes from and the outputs go."""
    model: str = "lenet"  # models.NAMES, or the path of a network definition (.json)
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) of the train_path rows' images; None: the model's
    classes: int | None = None  # None: the model's (MNIST's 10 for a preset)
    config: SGDConfig = SGDConfig()
    backup: BackupConfig = BackupConfig()
    workers: int = 2
    mode: str = "sync"  # fit.MODES: synchronous SGD (spark.SyncSGD) or asynchronous (async_sgd.AsyncSGD)
    engine: str = "auto"  # fit.ENGINES: a Spark job a step, or one job of long-lived tasks
    coordinator: str = "auto"  # one_job.COORDINATOR_PLACES: where the one-job engine's coordinator runs
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
        self.file.write(files.strict_json(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _data_fingerprint(labels: np.ndarray) -> str:
    """Which training set a checkpoint was written for: its size and a hash of its labels."""
    return f"{len(labels)} examples, labels sha256 {hashlib.sha256(labels.tobytes()).hexdigest()[:16]}"


def plan_of(run: TrainRun, network, data_id: str | None) -> fit.FitPlan:
    """The fit ``run`` asks for, in the job's spelling (``--backup-workers``)."""
    return fit.FitPlan(network, run.model, run.workers, run.mode, run.config, run.backup, run.lr_scaling,
                       run.straggler, spelling=fit.FLAGS, engine=run.engine, coordinator=run.coordinator,
                       checkpoint_dir=run.checkpoint_dir,
                       checkpoint_every=run.checkpoint_every, data=data_id)


def train(run: TrainRun) -> dict:
    """Train, test and write the outputs of ``run``; returns the summary. Bad data, settings or checkpoint: a
    DataError or ConfigError, before Spark starts where possible; a diverging run: update.DivergenceError. The
    summary (with ``status``) and the metrics are written also when the run stops on an error."""
    try:
        network = models.network_from(run.model, run.image_shape, run.classes)
    except ValueError as e:
        raise ConfigError(f"--model: {e}") from None
    log.info("the network:\n%s", network.summary())
    if not run.train_path and (network.input_shape, network.classes) != (models.MNIST_SHAPE, models.MNIST_CLASSES):
        raise ConfigError("--image-shape/--classes: the bundled MNIST is 1,28,28 with 10 classes; give --train "
                          "data of that shape")
    mnist = train_split = None
    if not run.train_path:
        mnist = data.load_mnist(run.data_dir)
        train_split = mnist.train
        if run.limit_train:
            train_split = data.Split(train_split.images[:run.limit_train], train_split.labels[:run.limit_train])
    plan = plan_of(run, network, _data_fingerprint(train_split.labels) if train_split is not None else run.train_path)
    fit.check(plan)
    shards = run.workers + run.backup.workers
    run.straggler.check_partitions(shards)
    if train_split is not None:
        run.config.check_data(len(train_split.labels), shards)
    tracker = tracking.tracker(run.mlflow, "--mlflow" if run.mlflow else "--mlflow-experiment", run.mlflow_experiment)
    state = fit.start_state(plan, resume=True) if run.resume else None
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
        sgd = fit.trainer(spark, plan)
        progress = StepProgress() if run.progress else None  # a bar on a terminal, else a log line now and then
        if tracker:
            fit.track_start(tracker, plan, sgd, data=plan.data, resumed_from_step=state.step if state else 0,
                            straggler_prob=run.straggler.prob, straggler_delay=run.straggler.delay)
        on_step = fit.each(history.append, metrics and metrics.write, progress and progress.update,
                           tracker and tracker.on_step)
        if mnist is not None:
            source = fit.Arrays(train_split.images, train_split.labels, mnist.validation)
        else:
            rows = readers.read_mnist(spark, run.train_path, run.data_format, "train")
            column = run.validation_col
            if not column:  # a fraction of the rows, or SystemML's first 5,000
                column = "is_validation"
                rows = (readers.with_validation_fraction(spark, rows, run.validation_fraction, run.config.seed)
                        if run.validation_fraction else readers.with_validation_flag(spark, rows, data.VALIDATION_SIZE))
            train_rows, validation_rows = fit.split_validation(rows, column, "--validation-col")
            source = fit.Frames(train_rows, validation_rows, run.features_col, run.label_col, run.staging_dir,
                                run.pixel_range)
        fitted = fit.run(sgd, plan, source, state, on_step)
        result = fitted.result
        if progress is not None:
            progress.close()
        model = NetworkClassificationModel(result.params, numClasses=network.classes)
        model._set(model=json.dumps(network.to_json()), imageShape=list(network.input_shape),
                   featuresCol=run.features_col, labelCol=run.label_col, pixelRange=run.pixel_range)
        if mnist is not None:
            test_accuracy = sgd.accuracy(result.params, mnist.test.images, mnist.test.labels)
        else:
            test_rows = readers.read_mnist(spark, run.test_path or run.train_path, run.data_format, "test")
            test_accuracy = readers.accuracy(model.transform(test_rows), label_col=run.label_col)
        if run.save_model:
            model.write().overwrite().save(str(run.save_model))
        summary = {"status": "ok", "model": run.model, "test_accuracy": test_accuracy, "epochs": sgd.config.epochs,
                   "workers": run.workers, "batch_size": sgd.config.batch_size, "backup_workers": run.backup.workers,
                   "shards": shards, "train_seconds": fitted.train_seconds,
                   "examples_per_second": fitted.figures["examples"] / fitted.train_seconds,
                   "spark_master": spark.sparkContext.master, **fitted.figures}
        if tracker:
            fit.track_result(tracker, fitted, plan, result.params, f"{run.model}, {run.workers} + "
                             f"{run.backup.workers} workers, {spark.sparkContext.master}", run.pixel_range, summary)
    except BaseException as e:  # the summary tells how the run ended, then the error goes on to the caller
        summary = {"status": "diverged" if isinstance(e, update.DivergenceError) else "failed", "mode": run.mode,
                   "error": str(e).splitlines()[0] if str(e) else type(e).__name__, **fit.step_statistics(history)}
        if tracker:
            summary["mlflow_run_id"] = tracker.run_id
        failure = e
        raise
    finally:
        spark.stop()
        if metrics:
            metrics.close()
        if run.summary:
            files.write_atomically(run.summary, files.strict_json(summary, indent=2) + "\n")
        if tracker:
            fit.track_end(tracker, summary, failure)
    if run.model_out:
        buffer = io.BytesIO()
        np.savez(buffer, **result.params)
        files.write_atomically(run.model_out, buffer.getvalue())
    return summary


def with_flags(run: TrainRun, **flags) -> TrainRun:
    """``run`` with the non-None ``flags`` set: TrainRun, SGDConfig or (``backup_`` + field) BackupConfig fields."""
    sgd, backup, rest = split_options({k: v for k, v in flags.items() if v is not None})
    return dataclasses.replace(run, config=dataclasses.replace(run.config, **sgd),
                               backup=dataclasses.replace(run.backup, **backup), **rest)

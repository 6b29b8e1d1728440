"""A whole training run as ``jobs/train_lenet.py`` does it: data, session, resume, fit, test, outputs."""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data, files, readers, staging, training
from . import spark as msp
from .config import BackupConfig, ConfigError, SGDConfig, split_options
from .straggler import StragglerModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRun:
    """One run: the training settings, and where the data comes from and the outputs go."""
    config: SGDConfig = SGDConfig()
    backup: BackupConfig = BackupConfig()
    workers: int = 2
    lr_scaling: str = "none"
    straggler: StragglerModel = StragglerModel()
    master: str | None = None  # None: the one spark-submit chose, else local[*]
    spark_conf: str | os.PathLike | None = None  # a spark-defaults.conf; None: the checkout's
    data_dir: str | os.PathLike | None = None  # the four MNIST IDX files; None: the bundled copy
    train_path: str | None = None  # instead of data_dir: a Hadoop path read into a DataFrame (readers)
    test_path: str | None = None  # with train_path; for idx, default: the train_path folder
    data_format: str = "idx"  # of train_path and test_path: idx, csv or parquet
    save_model: str | None = None  # the MLlib model directory (LeNetClassificationModel.save), any Hadoop path
    limit_train: int | None = None  # use the first N training images
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int = 0
    resume: bool = False
    metrics: str | os.PathLike | None = None  # one JSON object per step
    summary: str | os.PathLike | None = None  # one JSON object with the run's results
    model_out: str | os.PathLike | None = None  # the trained parameters, .npz
    progress: bool = True


def step_statistics(history: list[dict]) -> dict:
    """Step-time median, mean and p90 (seconds), examples, and dropped backup tasks of a run's history."""
    times = np.array([h["seconds"] for h in history]) if history else np.array([np.nan])
    return {"steps": len(history), "examples": sum(h["examples"] for h in history),
            "step_seconds_median": float(np.median(times)), "step_seconds_mean": float(np.mean(times)),
            "step_seconds_p90": float(np.percentile(times, 90)),
            "dropped_tasks": sum(len(h.get("dropped", [])) for h in history)}


def _resume_state(checkpoint: Path, shape: dict) -> training.TrainState:
    state, meta = training.load_checkpoint(checkpoint)
    saved = {**meta.get("config", {}), **meta}
    for key, value in shape.items():
        if key in saved and saved[key] != value:
            raise ConfigError(f"{checkpoint}: written with --{key.replace('_', '-')} {saved[key]}, "
                              f"resumed with {value}")
    log.info("resuming from %s at step %d", checkpoint, state.step)
    return state


def train(run: TrainRun) -> dict:
    """Train, test and write the outputs of ``run``; returns the summary. Errors in the data, the
    settings or a checkpoint raise DataError or ConfigError (before Spark starts where possible)."""
    mnist = None if run.train_path else data.load_mnist(run.data_dir)
    shards = run.workers + run.backup.workers
    # what a resumed run must share with its checkpoint, or it would not continue the same schedule
    shape = {"seed": run.config.seed, "batch_size": run.config.batch_size, "workers": run.workers,
             "backup_workers": run.backup.workers}
    checkpoint = Path(run.checkpoint_dir) / "checkpoint.npz" if run.checkpoint_dir else None
    state = _resume_state(checkpoint, shape) if run.resume else None

    under_spark_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started the JVM and chose the master
    spark = msp.session(run.master or (None if under_spark_submit else "local[*]"), conf_file=run.spark_conf)
    try:
        from .ml import LeNetClassificationModel  # pyspark.ml: only once Spark runs
        sgd = msp.SyncSGD(spark, run.workers, config=run.config, backup=run.backup, straggler=run.straggler,
                          lr_scaling=run.lr_scaling)
        config = sgd.config
        metrics_lines = []
        progress = None

        def start_progress(steps: int):
            nonlocal progress
            if run.progress and progress is None:
                from tqdm import tqdm
                progress = tqdm(total=steps, unit="step", dynamic_ncols=True, file=sys.stderr)

        def on_step(record):
            metrics_lines.append(json.dumps(record))
            start_progress(record["total_steps"] - record["step"] + 1)  # DataFrames: known once staged
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.3f}", epoch=record["epoch"] + 1,
                                     ex_s=f"{record['examples'] / record['seconds']:.0f}")

        save = (lambda st: training.save_checkpoint(checkpoint, st, config, shape)) if checkpoint else None
        fit_options = {"on_step": on_step, "state": state, "checkpoint": save,
                       "checkpoint_every": run.checkpoint_every}
        t0 = time.perf_counter()
        staging_seconds = 0.0
        if mnist is not None:
            train_split = mnist.train
            if run.limit_train:
                train_split = data.Split(train_split.images[:run.limit_train], train_split.labels[:run.limit_train])
            start_progress(config.total_steps(len(train_split.labels), shards) - (state.step if state else 0))
            result = sgd.fit(train_split.images, train_split.labels, validation_data=mnist.validation, **fit_options)
        else:
            from pyspark.sql import functions as F
            rows = readers.read_mnist(spark, run.train_path, run.data_format, "train")
            flagged = readers.with_validation_flag(spark, rows, data.VALIDATION_SIZE)
            is_validation = F.col("is_validation")
            result, staging_seconds = staging.fit_dataframes(sgd, flagged.filter(~is_validation),
                                                             flagged.filter(is_validation), "features", "label",
                                                             **fit_options)
        train_seconds = time.perf_counter() - t0 - staging_seconds
        if progress is not None:
            progress.close()
        if checkpoint and run.checkpoint_every:
            save(result.state)
        model = LeNetClassificationModel(result.params)
        if mnist is not None:
            test_accuracy = sgd.accuracy(result.params, mnist.test.images, mnist.test.labels)
        else:
            test_rows = readers.read_mnist(spark, run.test_path or run.train_path, run.data_format, "test")
            test_accuracy = readers.accuracy(model.transform(test_rows))
        if run.save_model:
            model.write().overwrite().save(str(run.save_model))
        stats = step_statistics(result.history)
        summary = {
            "test_accuracy": test_accuracy,
            "validation_accuracy": result.validation[-1]["accuracy"] if result.validation else None,
            "epochs": config.epochs, "workers": run.workers, "batch_size": config.batch_size,
            "backup_workers": run.backup.workers, "shards": shards, "train_seconds": train_seconds,
            "staging_seconds": staging_seconds, "examples_per_second": stats["examples"] / train_seconds,
            "final_loss": result.history[-1]["loss"] if result.history else None,
            "spark_master": spark.sparkContext.master, **stats,
        }
    finally:
        spark.stop()
    if run.metrics:
        files.write_atomically(run.metrics, "\n".join(metrics_lines) + "\n")
    if run.summary:
        files.write_atomically(run.summary, json.dumps(summary, indent=2) + "\n")
    if run.model_out:
        buffer = io.BytesIO()
        np.savez(buffer, **result.params)
        files.write_atomically(run.model_out, buffer.getvalue())
    return summary


def with_flags(run: TrainRun, **flags) -> TrainRun:
    """``run`` with the non-None ``flags`` set: ``TrainRun`` fields, ``SGDConfig`` fields, or
    ``backup_`` + a ``BackupConfig`` field."""
    sgd, backup, rest = split_options({k: v for k, v in flags.items() if v is not None})
    return dataclasses.replace(run, config=dataclasses.replace(run.config, **sgd),
                               backup=dataclasses.replace(run.backup, **backup), **rest)

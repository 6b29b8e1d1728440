"""MLflow tracking of a fit, from the driver only; off unless asked for (the job's ``--mlflow`` or
``--mlflow-experiment``, the estimator's ``mlflowTracking`` Param), or unless the caller has an MLflow run active
(``mlflow.active_run()``, or ``MLFLOW_RUN_ID`` as ``mlflow run`` sets it), which is then logged into.

mlflow is optional: this module imports it only when tracking is on (asked for without it: a ConfigError naming the
option). A run gets the settings as params, each step's numbers as metrics (sent in batches, ``log_batch``), the
validations, the final numbers, the summary as JSON, plots of the run, and the model (``mlflow_model``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mnist_lenet_spark import files
from mnist_lenet_spark.config import ConfigError

log = logging.getLogger(__name__)

#: step-record keys whose lists are logged as their lengths (backup workers: which shards were kept, dropped, failed)
_COUNTED = {"kept": "kept_tasks", "dropped": "dropped_tasks", "failed": "failed_tasks"}
_NOT_METRICS = {"step", "total_steps"}  # the step is the metric's step; pids, each_task_seconds: lists, not kept
BATCH_METRICS = 1000  # MLflow's limit per log_batch call
FLUSH_SECONDS = 10.0


def active_run_requested() -> bool:
    """Whether the caller has an MLflow run active: one started in this process (only if it imported mlflow, so
    this imports nothing) or ``MLFLOW_RUN_ID`` in the environment."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and getattr(mlflow, "active_run", None) and mlflow.active_run() is not None:
        return True
    return bool(os.environ.get("MLFLOW_RUN_ID"))


def _number(value) -> float | None:
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value)):
        return float(value)
    return None


def step_metrics(record: dict) -> dict[str, float]:
    """The numbers of one step record of ``training.fit_loop``: loss, lr, examples, seconds (the step as the loop
    timed it), step_seconds, task_seconds, close_seconds, pushed, epoch, and kept/dropped/failed_tasks."""
    out = {}
    for key, value in record.items():
        if key in _COUNTED and isinstance(value, (list, tuple)):
            out[_COUNTED[key]] = float(len(value))
        elif key not in _NOT_METRICS and (number := _number(value)) is not None:
            out[key] = number
    return out


class Tracker:
    """One fit's MLflow run: ``start``, ``log_training_params``, ``on_step`` per step, ``finish`` (or ``fail``)."""

    def __init__(self, option: str, experiment: str | None = None):
        try:
            import mlflow
        except ImportError:  # ConfigError naming the option that asked for it
            raise ConfigError(f"{option}: mlflow is not installed (pip install mlflow, or this package's "
                              f"'mlflow' extra)") from None
        self.mlflow, self.experiment = mlflow, experiment
        self.run_id: str | None = None
        self.owned = False  # started here (ended here), or the caller's run
        self.pending: list = []
        self.step_keys: set[str] = set()  # the per-step metrics' names
        self.last_flush = time.monotonic()
        self.model_info = None

    def start(self) -> Tracker:
        mlflow = self.mlflow
        run = mlflow.active_run()
        if run is None:
            if self.experiment:
                mlflow.set_experiment(self.experiment)
            run = mlflow.start_run()  # MLFLOW_RUN_ID, if set, is resumed
            self.owned = True
        elif self.experiment:
            log.warning("logging into the active MLflow run %s, not a run of experiment %r", run.info.run_id,
                        self.experiment)
        self.run_id = run.info.run_id
        self.client = mlflow.MlflowClient()
        log.info("MLflow run %s (tracking URI %s)", self.run_id, mlflow.get_tracking_uri())
        return self

    # -- params ------------------------------------------------------------------------------------------------
    def log_training_params(self, config, backup, workers: int, network, model_name, **extra) -> None:
        """As params (text; None as 'None'): the SGDConfig and BackupConfig (``backup_`` + field), the workers, the
        model's name or identity and its JSON definition's sha256 (sorted keys, 16 hex digits), and ``extra``."""
        from mnist_lenet_spark import models
        definition = json.dumps(network.to_json(), sort_keys=True)
        values = dict(dataclasses.asdict(config))
        values.update({f"backup_{k}": v for k, v in dataclasses.asdict(backup).items()})
        values.update({"workers": workers, "shards": workers + backup.workers,
                       "model": models.fingerprint(model_name, network),
                       "model_definition_sha256": hashlib.sha256(definition.encode()).hexdigest()[:16],
                       "input_shape": "x".join(map(str, network.input_shape)), "classes": network.classes, **extra})
        params = [self.mlflow.entities.Param(k, str(v)) for k, v in values.items()]
        for i in range(0, len(params), 100):  # MLflow takes up to 100 params a batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    # -- metrics -------------------------------------------------------------------------------------------------
    def _queue(self, values: dict, step: int) -> None:
        """``values``' numbers (``_number``; others left out) as metrics at ``step``, for the next ``flush``."""
        now = int(time.time() * 1000)
        self.pending.extend(self.mlflow.entities.Metric(k, n, now, step) for k, v in values.items()
                            if (n := _number(v)) is not None)

    def on_step(self, record: dict) -> None:
        """A step record's numbers, sent with others in one ``log_batch`` every 10 s (or 1,000 metrics)."""
        values = step_metrics(record)
        self.step_keys.update(values)
        self._queue(values, int(record.get("step", 0)))
        if len(self.pending) >= BATCH_METRICS or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def log_final(self, values: dict, step: int) -> None:
        """The run's final numbers (a summary's) at its last ``step``; a name that a per-step or validation
        series has already (examples, dropped_tasks, validation_accuracy) gets ``total_`` or ``final_`` before it."""
        def name(key: str) -> str:
            if key.startswith("validation_"):
                return "final_" + key
            return "total_" + key if key in self.step_keys else key
        self._queue({name(k): v for k, v in values.items()}, step)
        self.flush()

    def log_validation(self, validation: list[dict]) -> None:
        """Each validation as ``validation_accuracy`` and ``validation_loss`` at its step."""
        for v in validation:
            self._queue({f"validation_{k}": v.get(k) for k in ("accuracy", "loss")}, int(v["step"]))
        self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for i in range(0, len(pending), BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=pending[i:i + BATCH_METRICS])
        self.last_flush = time.monotonic()

    # -- artifacts -------------------------------------------------------------------------------------------------
    def log_summary(self, summary: dict) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "summary.json"
            path.write_text(files.strict_json(summary, indent=2) + "\n")
            self.client.log_artifact(self.run_id, str(path))

    def log_plots(self, history: list[dict], validation: list[dict], title: str) -> None:
        """The step-time distribution, and validation accuracy against training time, as PNGs under plots/."""
        if not history:
            return
        from mnist_lenet_spark import plots
        seconds = [h["seconds"] for h in history]
        wall = np.cumsum(seconds)
        first = history[0]["step"]  # a resumed run's history starts past step 1
        points = [(float(wall[v["step"] - first]), v["accuracy"]) for v in validation
                  if 0 <= v["step"] - first < len(wall)]
        with tempfile.TemporaryDirectory() as folder:
            plots.step_time_distribution({"steps": seconds}, Path(folder) / "step_times.png", title)
            plots.accuracy_vs_time({"validation": points}, Path(folder) / "accuracy_vs_time.png", title)
            plots.training_curves(history, validation, Path(folder) / "training_curves.png", title)
            self.client.log_artifacts(self.run_id, folder, "plots")

    def log_model(self, network, weights: dict, pixel_range: str) -> None:
        """The model, trained on pixels read in ``pixel_range``, as an MLflow pyfunc model, ``model`` in the run
        (``mlflow_model``)."""
        from mnist_lenet_spark import mlflow_model
        with tempfile.TemporaryDirectory() as folder:
            self.model_info = mlflow_model.log_model(network, weights, Path(folder), pixel_range)
        log.info("MLflow model logged: %s", self.model_info.model_uri)

    # -- the end -------------------------------------------------------------------------------------------------------
    def finish(self) -> None:
        self.flush()
        if self.owned:
            self.mlflow.end_run()

    def fail(self, error: BaseException) -> None:
        """Ends the run as FAILED (a run of the caller's is left to the caller); never raises over ``error``."""
        try:
            self.flush()
            if self.owned:
                self.mlflow.end_run(status="KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        except Exception as e:  # the fit's own error matters more
            log.warning("MLflow: could not close the run %s: %s", self.run_id, e)


def tracker(requested: bool, option: str, experiment: str | None = None) -> Tracker | None:
    """A Tracker (``start`` it) when MLflow is ``requested`` (by ``option``) or the caller has a run active, else
    None; a ConfigError naming ``option`` when mlflow is not installed."""
    if not (requested or experiment or active_run_requested()):
        return None
    if not (requested or experiment):
        option = "an active MLflow run (MLFLOW_RUN_ID)"
    return Tracker(option, experiment)

"""The straggler experiment: backup worker counts b = 0, 1, 2, ... and Spark speculation, side by side.

Writes ``straggler_experiment.json`` (step-time distributions, validation accuracy against wall-clock time) and two
PNG plots in the spirit of Chen et al. 2016, figures 3 and 4.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from mnist_lenet_spark import data, files, fit, plots
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.config import BackupConfig, SGDConfig
from mnist_lenet_spark.executor.straggler import StragglerModel

log = logging.getLogger(__name__)
#: Spark speculation tuned to react within a step (its defaults wait far longer than a step lasts)
SPECULATION = {"spark.speculation": "true", "spark.speculation.interval": "50ms",
               "spark.speculation.quantile": "0.5", "spark.speculation.multiplier": "1.5"}


@dataclass(frozen=True)
class Experiment:
    master: str = "local[2]"
    workers: int = 4  # N: gradients used per step
    backup: tuple[int, ...] = (0, 1, 2)  # the backup worker counts b to compare
    speculation: bool = True  # also run b = 0 with Spark speculation
    step_signal: bool = True
    batch_size: int = 64
    steps: int = 40
    straggler: StragglerModel = StragglerModel(0.1, 2.0)
    validate_every: int = 10
    validation_size: int = 1000
    seed: int = 0
    out_dir: str | os.PathLike = "out/straggler"
    spark_conf: str | os.PathLike | None = None

    def settings(self) -> dict:
        """The experiment as JSON values."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["straggler"] = self.straggler._asdict()
        return {k: str(v) if isinstance(v, os.PathLike) else v for k, v in values.items()}


def run_config(spark, exp: Experiment, mnist, backup_workers: int) -> dict:
    """One configuration's step times, dropped tasks and accuracy against time."""
    config = SGDConfig(batch_size=exp.batch_size, seed=exp.seed, validate_every=exp.validate_every, max_steps=exp.steps)
    sgd = msp.SyncSGD(spark, exp.workers, straggler=exp.straggler, config=config,
                      backup=BackupConfig(workers=backup_workers, signal=exp.step_signal))
    val = (mnist.validation.images[:exp.validation_size], mnist.validation.labels[:exp.validation_size])
    result = sgd.fit(mnist.train.images, mnist.train.labels, validation_data=val)
    wall = np.cumsum([h["seconds"] for h in result.history])
    stats = fit.step_statistics(result.history)
    return {"backup_workers": backup_workers, "step_seconds": [h["seconds"] for h in result.history],
            "step_seconds_mean": stats["step_seconds_mean"], "step_seconds_median": stats["step_seconds_median"],
            "step_seconds_p90": stats["step_seconds_p90"], "train_seconds": float(wall[-1]),
            "dropped_tasks": stats["dropped_tasks"],
            # from the N-th result's arrival to the return of the step (the next launch follows the update)
            "close_seconds_median": float(np.median([h["close_seconds"] for h in result.history]))
            if backup_workers else None,
            "accuracy_vs_time": [(float(wall[v["step"] - 1]), v["accuracy"]) for v in result.validation]}


def run(exp: Experiment) -> dict:
    """Every configuration of ``exp`` (each b in one session, speculation in its own); writes the outputs."""
    mnist = data.load_mnist()
    sessions = [({}, list(exp.backup))] + ([(SPECULATION, ["speculation"])] if exp.speculation else [])
    result = {}
    for extra_conf, names in sessions:
        spark = msp.session(exp.master, conf_file=exp.spark_conf, conf=extra_conf)
        spark.sparkContext.setLogLevel("ERROR")
        try:
            for name in names:
                key = "speculation" if name == "speculation" else f"b={name}"
                result[key] = run_config(spark, exp, mnist, 0 if name == "speculation" else name)
                log.info("%s: mean step %.3f s, p90 %.3f s", key, result[key]["step_seconds_mean"],
                         result[key]["step_seconds_p90"])
        finally:
            spark.stop()
    out = Path(exp.out_dir)
    title = f"N={exp.workers}, p={exp.straggler.prob}, delay {exp.straggler.delay:g} s, {exp.master}"
    plots.step_time_distribution({k: r["step_seconds"] for k, r in result.items()}, out / "step_times.png", title)
    plots.accuracy_vs_time({k: r["accuracy_vs_time"] for k, r in result.items()}, out / "accuracy_vs_time.png", title)
    payload = {"settings": exp.settings(), "runs": result}
    files.write_atomically(out / "straggler_experiment.json", json.dumps(payload, indent=1))
    return payload

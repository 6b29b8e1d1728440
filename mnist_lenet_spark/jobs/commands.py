"""The installed commands (pyproject.toml's [project.scripts]), which are also the entry points a Databricks
"Python wheel task" calls: each runs its job's ``main`` (flags from ``sys.argv``) and raises ``SystemExit`` with
its status when the job fails. A wheel task calls the function and ignores what it returns, so a returned status
of 2 (bad data, bad flags) would pass for success; a console script exits with the status either way.

    mnist-lenet-train       jobs/train_lenet.py            (mnist_lenet_spark.jobs.train_lenet)
    mnist-lenet-predict     jobs/predict.py                (mnist_lenet_spark.jobs.predict)
    mnist-lenet-experiment  jobs/straggler_experiment.py   (mnist_lenet_spark.jobs.straggler_experiment)
"""
from __future__ import annotations

import importlib


def _run(job: str, argv: list[str] | None) -> None:
    status = importlib.import_module(f"mnist_lenet_spark.jobs.{job}").main(argv)
    if status:
        raise SystemExit(status)


def train(argv: list[str] | None = None) -> None:
    _run("train_lenet", argv)


def predict(argv: list[str] | None = None) -> None:
    _run("predict", argv)


def experiment(argv: list[str] | None = None) -> None:
    _run("straggler_experiment", argv)

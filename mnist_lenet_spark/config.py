"""Every training default, in one place: the SGD schedule, the backup-worker policy, and the reader of
``conf/training.json``."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

from mnist_lenet_spark.loop import sharding

REFERENCE_BATCH = 64  # the batch SystemML's learning rate was tuned for


class ConfigError(ValueError):
    """A training option has a bad value; the message names the option and the value."""


_RUNTIME_TYPES = {"int": numbers.Integral, "float": numbers.Real, "bool": bool, "str": str, "None": type(None)}


def _check_types(obj, prefix: str = "") -> None:
    """Each field's value has its annotated type (``'float | None'``: a real number or None; never a bool
    for a number), so a mistyped setting fails here with its name, not later in arithmetic."""
    for f in dataclasses.fields(obj):
        names = [name.strip() for name in f.type.split("|")]
        value = getattr(obj, f.name)
        is_number_as_bool = isinstance(value, bool) and "bool" not in names
        if is_number_as_bool or not isinstance(value, tuple(_RUNTIME_TYPES[n] for n in names)):
            raise ConfigError(f"{prefix}{f.name} must be {' or '.join(names)}, got {value!r}")


def raise_failed(obj, checks, prefix: str = "") -> None:
    """ConfigError for the first of ``checks`` (name, ok, rule) that failed, naming the setting and its value."""
    for name, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{prefix}{name} {rule}, got {getattr(obj, name)!r}")


LR_SCHEDULES = ("exponential", "cosine")
EARLY_STOPPING_METRICS = ("accuracy", "loss")  # of the validation data


@dataclass(frozen=True)
class SGDConfig:
    """SystemML's LeNet schedule."""
    batch_size: int = 64  # per worker (per shard) per step
    lr: float = 0.01
    momentum: float = 0.9
    lr_decay: float = 0.95  # lr multiplied by this once per epoch
    l2: float = 5e-4
    epochs: int = 1
    seed: int = 0
    validate_every: int = 0  # steps; 0 = only at the end of each epoch
    max_steps: int | None = None  # stop after this many steps in all
    dropout: bool = True
    warmup_steps: int = 0  # linear warm-up of the learning rate (Goyal et al. 2017)
    lr_schedule: str = "exponential"  # lr x lr_decay per epoch; "cosine": per step, to 0 at the run's last step
    # early stopping: stop once the validation metric has not improved by more than min_delta for this many
    # validations in a row (validations: every validate_every steps and at each epoch's end); 0 = off. The fit
    # then ends with the parameters of the best validation.
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    early_stopping_metric: str = "accuracy"  # "accuracy" (higher is better) or "loss" (validation loss, lower)

    def __post_init__(self):
        _check_types(self)
        raise_failed(self, [
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", math.isfinite(self.lr) and self.lr > 0, "must be a positive finite number"),
            ("momentum", math.isfinite(self.momentum) and 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("lr_decay", math.isfinite(self.lr_decay) and 0 < self.lr_decay <= 1, "must be in (0, 1]"),
            ("l2", math.isfinite(self.l2) and self.l2 >= 0, "must be >= 0"),
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("seed", self.seed >= 0, "must be >= 0"),
            ("validate_every", self.validate_every >= 0, "must be >= 0"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "must be >= 1"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("lr_schedule", self.lr_schedule in LR_SCHEDULES, f"must be one of {', '.join(LR_SCHEDULES)}"),
            ("early_stopping_patience", self.early_stopping_patience >= 0, "must be >= 0 (0: off)"),
            ("early_stopping_min_delta", math.isfinite(self.early_stopping_min_delta)
             and self.early_stopping_min_delta >= 0, "must be a finite number >= 0"),
            ("early_stopping_metric", self.early_stopping_metric in EARLY_STOPPING_METRICS,
             f"must be one of {', '.join(EARLY_STOPPING_METRICS)}"),
        ])

    def learning_rate(self, epoch: int, step: int, total_steps: int) -> float:
        """The rate of global ``step`` (0-based) in ``epoch`` of a run of ``total_steps``, ramped linearly over
        the first ``warmup_steps``. "exponential": lr * lr_decay**epoch (SystemML's schedule). "cosine": after
        the warm-up, lr * (1 + cos(pi * t)) / 2 as t goes from 0 to 1 over the remaining steps (Loshchilov and
        Hutter 2017, without restarts; lr_decay unused): every step sees a smaller rate, the last ones almost 0."""
        if self.lr_schedule == "cosine":
            t = (step - self.warmup_steps) / max(total_steps - self.warmup_steps, 1)
            lr = self.lr * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))
        else:
            lr = self.lr * self.lr_decay ** epoch
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr

    def scaled_for(self, workers: int, lr_scaling: str) -> SGDConfig:
        """``lr_scaling="linear"``: lr x (workers x batch_size / 64), Goyal et al. 2017; "none": unchanged."""
        if lr_scaling not in ("none", "linear"):
            raise ConfigError(f"lr_scaling must be 'none' or 'linear', got {lr_scaling!r}")
        if lr_scaling == "none":
            return self
        return dataclasses.replace(self, lr=self.lr * workers * self.batch_size / REFERENCE_BATCH)

    def check_data(self, num_examples: int, shards: int) -> None:
        """ConfigError unless ``num_examples`` fill ``shards`` shards with at least one batch each."""
        if num_examples < shards:
            raise ConfigError(f"{shards} tasks per step need at least {shards} training examples, got {num_examples}")
        smallest = min(b - a for a, b in sharding.shard_bounds(num_examples, shards))
        if self.batch_size > smallest:
            raise ConfigError(f"batch_size {self.batch_size} is larger than a shard: {num_examples} training examples "
                              f"over {shards} tasks leave {smallest} in the smallest")

    def total_steps(self, num_examples: int, shards: int) -> int:
        """Steps of the whole run: ``epochs`` epochs, cut at ``max_steps``."""
        total = sharding.steps_per_epoch(num_examples, shards, self.batch_size) * self.epochs
        return min(total, self.max_steps) if self.max_steps is not None else total


@dataclass(frozen=True)
class BackupConfig:
    """Backup workers (Chen et al. 2016): ``workers`` extra tasks per step whose slowest results are dropped. ``mode``:
    "cancel" goes on at the N-th result (the feature); "wait-all" waits for all N + b tasks and keeps the N that
    finished first (a comparison mode that saves no time). ``grace``: seconds after the N-th result before Spark cancels
    the rest of the step; None means twice the median task time so far. ``cancel``: False never cancels. ``signal``:
    tell a closed step's late tasks to stop by themselves (``step_signal``). ``combine``: where the kept gradients are
    added: "driver" (each arrives whole and joins a running sum) or "executors" (each task keeps its sums in a cached
    partition and sends only a note; at the N-th note one more job over the kept partitions adds them on the executors,
    so the driver receives ~sqrt(N) partial sums: for large N)."""
    workers: int = 0
    mode: str = "cancel"
    grace: float | None = None
    cancel: bool = True
    signal: bool = True
    combine: str = "driver"

    def __post_init__(self):
        _check_types(self, prefix="backup_")
        raise_failed(self, [
            ("workers", self.workers >= 0, "must be an integer >= 0"),
            ("mode", self.mode in ("cancel", "wait-all"), "must be 'cancel' or 'wait-all'"),
            ("combine", self.combine in ("driver", "executors"), "must be 'driver' or 'executors'"),
            ("grace", self.grace is None or (math.isfinite(self.grace) and self.grace >= 0), "must be >= 0"),
        ], prefix="backup_")


@dataclass(frozen=True)
class TrainingConf:
    """What ``conf/training.json`` sets: the job's worker count and its SGD and backup settings."""
    workers: int = 2
    sgd: SGDConfig = SGDConfig()
    backup: BackupConfig = BackupConfig()


def split_options(options: dict) -> tuple[dict, dict, dict]:
    """Flat settings -> (``SGDConfig`` fields, ``BackupConfig`` fields given as ``backup_`` + the field name,
    everything else): how SyncSGD's keywords, the job's flags and conf/training.json name the settings."""
    sgd_fields = {f.name for f in dataclasses.fields(SGDConfig)}
    backup_fields = {f.name for f in dataclasses.fields(BackupConfig)}
    sgd, backup, rest = {}, {}, {}
    for key, value in options.items():
        if key in sgd_fields:
            sgd[key] = value
        elif key.startswith("backup_") and key[len("backup_"):] in backup_fields:
            backup[key[len("backup_"):]] = value
        else:
            rest[key] = value
    return sgd, backup, rest


def read_training_conf(path: str | os.PathLike) -> TrainingConf:
    """A JSON object of ``workers``, any ``SGDConfig`` field, and ``backup_`` + any ``BackupConfig`` field. Keys
    left out keep the defaults above; an unknown key or a value of the wrong type is a ConfigError naming the file
    and the key."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read training conf ({e.strerror})") from None
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object of settings, got {type(values).__name__}")
    sgd, backup, rest = split_options(values)
    unknown = sorted(set(rest) - {"workers"})
    if unknown:
        known = ["workers", *(f.name for f in dataclasses.fields(SGDConfig)),
                 *("backup_" + f.name for f in dataclasses.fields(BackupConfig))]
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    try:
        workers = rest.get("workers", TrainingConf.workers)
        if type(workers) is not int or workers < 1:
            raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
        return TrainingConf(workers, SGDConfig(**sgd), BackupConfig(**backup))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None

"""Distributed synchronous SGD on Spark: broadcast, mapPartitions, treeReduce, driver update.

Each step the driver broadcasts the flat float32 parameters; each RDD partition (one per
shard) computes the gradient *sum* of its own mini-batch in NumPy inside ``mapPartitions``;
``treeReduce`` adds the ``(grad_sum, loss_sum, count)`` triples; ``training.fit_loop`` divides
by the count, adds the L2 term once and updates.

The training images are broadcast once per ``fit`` as uint8 (43 MB for MNIST). Each Python
worker unpickles a broadcast once and keeps it while it is reused, so a step ships only the
step's batch indices and the parameters: per-step data movement depends on the batch size,
not on the data set. (A cached RDD of the shards would be streamed from the JVM to Python in
every job: ~30 ms per step for MNIST and growing with the data set; see PERF_NOTES.)
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import tempfile
import time
import zipfile
from functools import partial
from pathlib import Path

import numpy as np

from . import sharding, training, worker
from .models import base, lenet

log = logging.getLogger(__name__)

#: settings the step needs to be cheap (each explained in the README); conf/spark-defaults.conf has them too
TUNED_CONF = {
    "spark.python.unix.domain.socket.enabled": "true",  # ~40 ms less per job than the TCP socket
    "spark.task.maxDirectResultSize": "64m",  # 6.6 MB gradients go back in the task result, not via the block manager
    "spark.python.worker.reuse": "true",
    "spark.ui.showConsoleProgress": "false",  # our own progress bar is on the driver
    "spark.python.task.killTimeout": "0s",  # a cancelled backup task's worker is killed at the next check, not 2 s later
}
PACKAGE_DIR = Path(__file__).resolve().parent
REFERENCE_BATCH = 64  # the batch SystemML's learning rate was tuned for


def read_conf_file(path: str | os.PathLike) -> dict[str, str]:
    """``key value`` lines of a spark-defaults.conf (comments and blank lines skipped)."""
    conf = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise training.ConfigError(f"{path}: cannot read Spark conf file ({e.strerror})") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise training.ConfigError(f"{path}:{number}: expected 'key value', got {line!r}")
        conf[parts[0]] = parts[1].strip()
    return conf


def session(master: str | None = None, app_name: str = "mnist_lenet_spark", conf: dict | None = None,
            conf_file: str | os.PathLike | None = None):
    """A SparkSession with the tuned settings; values in ``conf_file`` and ``conf`` take precedence."""
    from pyspark.sql import SparkSession
    settings = dict(TUNED_CONF)
    # Python workers run this interpreter (with this package and numpy) unless the user chose one.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if conf_file:
        settings.update(read_conf_file(conf_file))
    settings.update(conf or {})
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if not spark.sparkContext.master.startswith("local"):
        ship_package(spark.sparkContext)
    return spark


def ship_package(sc) -> str:
    """Zip this package and ``addPyFile`` it, so executors on a cluster can import it."""
    out = Path(tempfile.mkdtemp(prefix="mnist_lenet_spark-")) / "mnist_lenet_spark.zip"
    build_zip(out)
    sc.addPyFile(str(out))
    return str(out)


def build_zip(path: str | os.PathLike) -> Path:
    """The package as a zip importable from ``--py-files`` (written atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(PACKAGE_DIR.rglob("*.py")):
            z.write(f, Path("mnist_lenet_spark") / f.relative_to(PACKAGE_DIR))
    os.replace(tmp, path)
    return path


def _add(a, b):
    """Sum two (grad_sum, loss_sum, count, pids) partials."""
    return a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]


def shard_gradient(model, spec, params_bc, data_bc, train, threads, straggler, items, should_stop=None):
    """(grad_sum, loss_sum, count, (pid,)) of this partition's mini-batch of the broadcast data, or None.

    ``should_stop`` (backup workers): asked during injected delays and before each batch; True
    abandons the work and returns None.
    """
    worker.tune_process(threads)
    items = list(items)  # drain the iterator: only then is the Python worker reused
    for _, seed in items if straggler is not None else ():
        straggler.sleep(seed[1], seed[2], seed[3], should_stop)
    flat = params_bc.value
    images, labels = data_bc.value
    total = training.sum_batch_gradients(model, spec, flat, images, labels, items, train, flat.dtype, should_stop)
    return None if total is None else total + ((worker.pid(),),)


def _shard_task(model, spec, params_bc, data_bc, train, threads, straggler, items):
    """mapPartitions body of a plain synchronous step."""
    total = shard_gradient(model, spec, params_bc, data_bc, train, threads, straggler, items)
    if total is not None:
        yield total


def _given_batch_task(model, spec, params_bc, threads, items):
    """mapPartitions body for ``SyncSGD.gradient``: the batch travels with the task; no dropout."""
    worker.tune_process(threads)
    for X, y in items:
        yield training.gradient_sum(model, spec, params_bc.value, X, y, rng=None) + ((worker.pid(),),)


def _count_correct_task(model, spec, params_bc, data_bc, threads, ranges):
    worker.tune_process(threads)
    images, labels = data_bc.value
    params = base.unflatten(params_bc.value, spec)
    correct = 0
    for start, stop in ranges:
        correct += training.count_correct(model, params, images[start:stop], labels[start:stop])
    yield correct


class SyncSGD:
    """Synchronous SGD over ``workers`` Spark tasks per step; effective batch = batch_size x workers.

    Parameters
    ----------
    spark : SparkSession or SparkContext
    workers : gradient tasks (shards) per step
    batch_size : examples per worker per step
    seed : shuffling, dropout and initialisation seed
    model : any ``models.base.Model``; LeNet by default
    lr, momentum, lr_decay, l2, validate_every, dropout, warmup_steps : see ``training.SGDConfig``
    backup_workers : extra tasks per step whose slowest results are dropped (see ``backup.py``)
    straggler : a ``straggler.StragglerModel`` that delays tasks, for experiments
    backup_grace, backup_cancel : when the rest of a backup step is cancelled (see ``backup.py``)
    backup_signal : tell a closed step's late tasks to stop by themselves (see ``step_signal.py``)
    backup_mode : "cancel" (the feature: go on at the N-th result) or "wait-all" (comparison mode:
        wait for all N + b tasks, then keep the N that finished first)
    lr_scaling : "linear" multiplies lr by (workers x batch_size / 64); pair it with warmup_steps
    """

    def __init__(self, spark, workers: int = 2, batch_size: int = 64, seed: int = 0, *, model: base.Model = lenet,
                 lr: float = 0.01, momentum: float = 0.9, lr_decay: float = 0.95, l2: float = lenet.L2,
                 validate_every: int = 0, dropout: bool = True, warmup_steps: int = 0, backup_workers: int = 0,
                 straggler=None, backup_grace: float | None = None, backup_cancel: bool = True,
                 lr_scaling: str = "none", backup_mode: str = "cancel", backup_signal: bool = True):
        if not isinstance(workers, int) or workers < 1:
            raise training.ConfigError(f"workers must be an integer >= 1, got {workers!r}")
        if not isinstance(backup_workers, int) or backup_workers < 0:
            raise training.ConfigError(f"backup_workers must be an integer >= 0, got {backup_workers!r}")
        if backup_mode not in ("cancel", "wait-all"):
            raise training.ConfigError(f"backup_mode must be 'cancel' or 'wait-all', got {backup_mode!r}")
        if lr_scaling not in ("none", "linear"):
            raise training.ConfigError(f"lr_scaling must be 'none' or 'linear', got {lr_scaling!r}")
        if lr_scaling == "linear":  # Goyal et al. 2017: lr grows with the effective batch, from SystemML's 64
            lr = lr * workers * batch_size / REFERENCE_BATCH
        self.sc = getattr(spark, "sparkContext", spark)
        self.workers = workers
        self.backup_workers = backup_workers
        self.straggler = straggler
        self.backup_options = {"grace": backup_grace, "cancel": backup_cancel, "wait_all": backup_mode == "wait-all",
                               "signal": backup_signal}
        self.model = model
        self.config = training.SGDConfig(batch_size=batch_size, lr=lr, momentum=momentum, lr_decay=lr_decay,
                                         l2=l2, seed=seed, validate_every=validate_every, dropout=dropout,
                                         warmup_steps=warmup_steps)
        self.threads = int(self.sc.getConf().get("spark.task.cpus", "1"))

    # -- one given batch ---------------------------------------------------------------------------
    def gradient(self, params: base.Params, X: np.ndarray, y: np.ndarray) -> tuple[float, base.Params]:
        """Loss and gradients of one batch split over the workers; equals
        ``model.loss_and_grads(params, X, y, train=False, l2=self.config.l2)``. Keeps the dtype of params."""
        if len(y) == 0 or len(X) != len(y):
            raise training.ConfigError(f"gradient needs a non-empty batch with one label per example, "
                                       f"got {len(X)} examples and {len(y)} labels")
        spec = base.param_spec(params)
        flat = base.flatten(params, spec)
        parts = [(X[a:b], y[a:b]) for a, b in sharding.shard_bounds(len(y), self.workers) if b > a]
        bc = self.sc.broadcast(flat)
        try:
            rdd = self.sc.parallelize(parts, len(parts))
            g, loss_sum, count, _ = rdd.mapPartitions(
                partial(_given_batch_task, self.model, spec, bc, self.threads)).treeReduce(_add)
        finally:
            bc.destroy(blocking=False)
        grad = base.unflatten(g / g.dtype.type(count), spec)
        loss = loss_sum / count
        if self.config.l2:
            loss += base.add_l2(params, grad, self.model.REGULARIZED, self.config.l2)
        return loss, grad

    # -- training ----------------------------------------------------------------------------------
    def fit(self, X_train: np.ndarray, y_train: np.ndarray, epochs: int = 1, validation_data=None, *,
            max_steps: int | None = None, on_step=None, state: training.TrainState | None = None,
            checkpoint=None, checkpoint_every: int = 0) -> training.FitResult:
        """Train on uint8 images ``X_train`` (N, 28, 28) and labels ``y_train`` (N,).

        ``validation_data``: (images, labels) evaluated over the cluster every ``validate_every``
        steps and at each epoch's end. ``state`` resumes from a checkpoint.
        """
        config = dataclasses.replace(self.config, epochs=epochs, max_steps=max_steps)
        tasks = self.workers + self.backup_workers
        if len(y_train) < tasks:
            raise training.ConfigError(f"{tasks} tasks per step need at least {tasks} training examples, "
                                       f"got {len(y_train)}")
        spec, fresh = training.new_state(self.model, config.seed)
        state = state or fresh
        data_bc = self.sc.broadcast((np.ascontiguousarray(X_train), np.asarray(y_train, np.int64)))
        val_bc = self.sc.broadcast(tuple(map(np.asarray, validation_data))) if validation_data is not None else None
        total = sharding.steps_per_epoch(len(y_train), tasks, config.batch_size) * epochs
        if max_steps:
            total = min(total, max_steps)
        if self.backup_workers:
            from .backup import BackupGradient
            gradient = BackupGradient(self, spec, data_bc, config, total, **self.backup_options)
        else:
            gradient = partial(self._step, spec, data_bc, config, total)
        try:
            return training.fit_loop(self.model, spec, state, len(y_train), tasks, gradient, config,
                                     partial(self._evaluate, spec, val_bc) if val_bc else None, on_step,
                                     checkpoint, checkpoint_every)
        finally:
            if self.backup_workers:
                gradient.close()
            data_bc.destroy(blocking=False)
            if val_bc:
                val_bc.destroy(blocking=False)

    def _step(self, spec, data_bc, config, total, flat, batches, epoch, step):
        """One synchronous step: broadcast, mapPartitions, treeReduce. Returns the sums and step info."""
        self.sc.setJobDescription(f"step {step + 1}/{total}, epoch {epoch + 1}")
        t0 = time.perf_counter()
        bc = self.sc.broadcast(flat)
        try:
            rdd = self.step_rdd(config, batches, epoch, step)
            g, loss_sum, count, pids = rdd.mapPartitions(
                partial(_shard_task, self.model, spec, bc, data_bc, config.dropout, self.threads,
                        self.straggler)).treeReduce(_add)
        finally:
            bc.destroy(blocking=False)  # or the executors fill up with old parameters
        return g, loss_sum, count, {"step_seconds": time.perf_counter() - t0, "pids": sorted(pids)}

    def step_rdd(self, config, batches, epoch, step):
        """One partition per shard, holding that shard's batch indices and dropout seed."""
        items = sharding.step_items(config.seed, epoch, step, batches)
        return self.sc.parallelize(items, len(items))

    def _evaluate(self, spec, val_bc, flat, chunk: int = 1000) -> float:
        """Accuracy on the broadcast validation set, counted over the cluster."""
        n = len(val_bc.value[1])
        self.sc.setJobDescription("validation")
        bc = self.sc.broadcast(flat)
        try:
            ranges = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]
            slices = min(len(ranges), max(self.workers, 1))
            correct = self.sc.parallelize(ranges, slices).mapPartitions(
                partial(_count_correct_task, self.model, spec, bc, val_bc, self.threads)).sum()
        finally:
            bc.destroy(blocking=False)
        return correct / n

    def accuracy(self, params: base.Params, images: np.ndarray, labels: np.ndarray) -> float:
        """Accuracy of ``params`` on uint8 ``images`` (N, 28, 28), counted over the cluster."""
        spec = base.param_spec(params)
        bc = self.sc.broadcast((np.asarray(images), np.asarray(labels)))
        try:
            return self._evaluate(spec, bc, base.flatten(params, spec))
        finally:
            bc.destroy(blocking=False)

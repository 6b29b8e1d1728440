"""Train LeNet on MNIST with synchronous SGD on Spark; prints the test accuracy.

    spark-submit --properties-file conf/spark-defaults.conf jobs/train_lenet.py --epochs 1
    python jobs/train_lenet.py --master 'local[*]' --epochs 1
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mnist_lenet_spark import data, training  # noqa: E402
from mnist_lenet_spark.models import base, lenet  # noqa: E402

log = logging.getLogger("train_lenet")
DEFAULTS = json.loads((ROOT / "conf" / "training.json").read_text())


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def probability(text):
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def parse_args(argv=None):
    p = Parser(prog="train_lenet", description=__doc__.splitlines()[0])
    p.add_argument("--master", default=None, help="Spark master when run with plain python (default local[*]); "
                                                   "under spark-submit the master comes from spark-submit")
    p.add_argument("--conf", default=None, help="a spark-defaults.conf to apply (plain python runs)")
    p.add_argument("--data-dir", default=None, help="folder with the four MNIST IDX files (default: bundled)")
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS["epochs"])
    p.add_argument("--max-steps", type=positive_int, default=None)
    p.add_argument("--workers", type=positive_int, default=DEFAULTS["workers"])
    p.add_argument("--backup-workers", type=non_negative_int, default=0)
    p.add_argument("--backup-mode", choices=["cancel", "wait-all"], default="cancel",
                   help="cancel: go on at the N-th result; wait-all: wait for every task, keep the first N")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS["batch_size"], help="per worker")
    p.add_argument("--lr", type=finite_float, default=DEFAULTS["lr"])
    p.add_argument("--momentum", type=finite_float, default=DEFAULTS["momentum"])
    p.add_argument("--lr-decay", type=finite_float, default=DEFAULTS["lr_decay"])
    p.add_argument("--l2", type=finite_float, default=DEFAULTS["l2"])
    p.add_argument("--warmup-steps", type=non_negative_int, default=0)
    p.add_argument("--lr-scaling", choices=["none", "linear"], default="none",
                   help="linear: lr x (workers x batch size / 64), Goyal et al. 2017")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--limit-train", type=positive_int, default=None, help="use the first N training images")
    p.add_argument("--validate-every", type=non_negative_int, default=DEFAULTS["validate_every"])
    p.add_argument("--metrics", default=None, help="write one JSON object per step to this file")
    p.add_argument("--summary", default=None, help="write one JSON object with the run's results")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-every", type=non_negative_int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument("--model-out", default=None, help="save the trained parameters to this .npz")
    p.add_argument("--straggler-prob", type=probability, default=0.0)
    p.add_argument("--straggler-delay", type=finite_float, default=0.0, help="seconds")
    p.add_argument("--slow-partitions", default="", help="comma-separated partitions that always straggle")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.resume and not args.checkpoint_dir:
        p.error("--resume needs --checkpoint-dir")
    if args.checkpoint_every and not args.checkpoint_dir:
        p.error("--checkpoint-every needs --checkpoint-dir")
    if args.straggler_delay < 0:
        p.error(f"argument --straggler-delay: must be >= 0, got {args.straggler_delay}")
    try:
        args.slow_partitions = [int(v) for v in args.slow_partitions.split(",") if v.strip()]
    except ValueError:
        p.error(f"argument --slow-partitions: expected integers separated by commas, got {args.slow_partitions!r}")
    if args.data_dir and not Path(args.data_dir).is_dir():
        p.error(f"argument --data-dir: {args.data_dir}: no such directory")
    if args.conf and not Path(args.conf).is_file():
        p.error(f"argument --conf: {args.conf}: no such file")
    return args


def write_atomically(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its connection chatter is not for users
    try:
        return run(args)
    except (data.DataError, training.ConfigError) as e:
        if "pyspark" in sys.modules:  # stop a session the run had started, before the error line
            from pyspark.sql import SparkSession
            active = SparkSession.getActiveSession()
            if active is not None:
                active.stop()
        print(f"train_lenet: error: {e}", file=sys.stderr)
        return 2


def run(args):
    from mnist_lenet_spark import spark as msp
    from mnist_lenet_spark.straggler import StragglerModel

    mnist = data.load_mnist(args.data_dir)
    train = mnist.train
    if args.limit_train:
        train = data.Split(train.images[:args.limit_train], train.labels[:args.limit_train])
    straggler = StragglerModel(args.straggler_prob, args.straggler_delay, tuple(args.slow_partitions), args.seed)
    state = None
    ckpt = Path(args.checkpoint_dir) / "checkpoint.npz" if args.checkpoint_dir else None
    run_shape = {"seed": args.seed, "batch_size": args.batch_size, "workers": args.workers,
                 "backup_workers": args.backup_workers}
    if args.resume:
        state, meta = training.load_checkpoint(ckpt)
        saved = {**meta.get("config", {}), **meta}
        for key, value in run_shape.items():  # a different schedule would not continue the same run
            if key in saved and saved[key] != value:
                raise training.ConfigError(f"{ckpt}: written with --{key.replace('_', '-')} {saved[key]}, "
                                           f"resumed with {value}")
        log.info("resuming from %s at step %d", ckpt, state.step)
    conf_file = args.conf
    under_spark_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started the JVM and chose the master
    master = args.master or (None if under_spark_submit else "local[*]")
    spark = msp.session(master, conf_file=conf_file)
    sc = spark.sparkContext
    sgd = msp.SyncSGD(spark, workers=args.workers, batch_size=args.batch_size, seed=args.seed, lr=args.lr,
                      momentum=args.momentum, lr_decay=args.lr_decay, l2=args.l2,
                      validate_every=args.validate_every, warmup_steps=args.warmup_steps,
                      backup_workers=args.backup_workers, straggler=straggler if straggler.active else None,
                      lr_scaling=args.lr_scaling, backup_mode=args.backup_mode)

    metrics_lines = []
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        from mnist_lenet_spark import sharding
        total = sharding.steps_per_epoch(len(train.labels), args.workers + args.backup_workers,
                                         args.batch_size) * args.epochs
        total = min(total, args.max_steps or total) - (state.step if state else 0)
        progress = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)

    def on_step(record):
        metrics_lines.append(json.dumps(record))
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.3f}", epoch=record["epoch"] + 1,
                                 ex_s=f"{record['examples'] / record['seconds']:.0f}")

    checkpoint = (lambda st: training.save_checkpoint(ckpt, st, sgd.config, run_shape)) if ckpt else None
    t0 = time.perf_counter()
    result = sgd.fit(train.images, train.labels, epochs=args.epochs, max_steps=args.max_steps,
                     validation_data=(mnist.validation.images, mnist.validation.labels), on_step=on_step,
                     state=state, checkpoint=checkpoint, checkpoint_every=args.checkpoint_every)
    train_seconds = time.perf_counter() - t0
    if progress is not None:
        progress.close()
    if ckpt and args.checkpoint_every:
        training.save_checkpoint(ckpt, result.state, sgd.config, run_shape)
    test_acc = sgd.accuracy(result.params, mnist.test.images, mnist.test.labels)
    steps = result.history
    step_times = np.array([h["seconds"] for h in steps]) if steps else np.array([np.nan])
    examples = sum(h["examples"] for h in steps)
    summary = {
        "test_accuracy": test_acc,
        "validation_accuracy": result.validation[-1]["accuracy"] if result.validation else None,
        "epochs": args.epochs, "steps": len(steps), "workers": args.workers, "batch_size": args.batch_size,
        "backup_workers": args.backup_workers,
        "dropped_tasks": sum(len(h.get("dropped", [])) for h in steps),
        "train_seconds": train_seconds, "examples_per_second": examples / train_seconds,
        "step_seconds_median": float(np.median(step_times)), "step_seconds_mean": float(np.mean(step_times)),
        "step_seconds_p90": float(np.percentile(step_times, 90)),
        "final_loss": steps[-1]["loss"] if steps else None, "spark_master": sc.master,
    }
    if args.metrics:
        write_atomically(args.metrics, "\n".join(metrics_lines) + "\n")
    if args.summary:
        write_atomically(args.summary, json.dumps(summary, indent=2) + "\n")
    if args.model_out:
        out = Path(args.model_out)
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=out.parent if str(out.parent) else ".")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **result.params)
        os.replace(tmp, out)
    spark.stop()
    print(f"steps {len(steps)}, {train_seconds:.1f} s, {summary['examples_per_second']:.0f} examples/s, "
          f"median step {summary['step_seconds_median'] * 1000:.0f} ms")
    if summary["validation_accuracy"] is not None:
        print(f"validation accuracy: {summary['validation_accuracy']:.4f}")
    print(f"test accuracy: {test_acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

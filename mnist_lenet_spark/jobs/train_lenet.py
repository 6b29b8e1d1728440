"""Train LeNet on MNIST with synchronous SGD on Spark; prints the test accuracy.

    spark-submit --properties-file conf/spark-defaults.conf jobs/train_lenet.py --epochs 1
    python jobs/train_lenet.py --master 'local[*]' --epochs 1
    mnist-lenet-train --master 'local[*]' --epochs 1        (the installed package's command)

Settings not given as flags come from conf/training.json (or --training-conf), then from
``mnist_lenet_spark.config``.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from mnist_lenet_spark import config, data, files, fit
from mnist_lenet_spark.cluster import one_job, task_errors
from mnist_lenet_spark.executor.rows import PIXEL_RANGES
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.jobs import runs
from mnist_lenet_spark.jobs.cli import (Parser, finite_float, int_list, non_negative_float, non_negative_int,
                                        positive_int, probability)
from mnist_lenet_spark.loop import update

TRAINING_CONF = files.resource("conf", "training.json")  # the checkout's, or an installed wheel's copy
#: the exit status of each error the job reports in one line: bad data or settings, divergence, a failed step
EXIT_STATUS = {data.DataError: 2, config.ConfigError: 2, update.DivergenceError: 3, task_errors.StepFailure: 4}


def parse_args(argv=None):
    p = Parser(prog="train_lenet", description=__doc__.splitlines()[0])
    p.add_argument("--master", default=None, help="Spark master when run with plain python (default local[*]); "
                                                   "under spark-submit the master comes from spark-submit")
    p.add_argument("--conf", default=None, help="a spark-defaults.conf to apply (plain python runs)")
    p.add_argument("--training-conf", default=str(TRAINING_CONF), help="JSON file of training settings")
    p.add_argument("--data-dir", default=None, help="folder with the four MNIST IDX files (default: bundled)")
    p.add_argument("--train", default=None, help="training data on any Hadoop path, read as a DataFrame and staged "
                                                 "on the executors (idx: a folder; csv, parquet: files)")
    p.add_argument("--test", default=None, help="test data, with --train (idx default: the --train folder)")
    p.add_argument("--format", choices=["idx", "csv", "parquet"], default="idx", help="of --train and --test")
    p.add_argument("--staging-dir", default=None, help="with --train: where the staged shards go, a folder every "
                        "executor mounts or a store's URL (s3://bucket/prefix); default: each executor's local disk")
    p.add_argument("--pixel-range", choices=PIXEL_RANGES, default=None, help="with --train: numeric features hold "
                   "whole numbers 0..255 (default) or values 0..1 (multiples of 1/255; never rounded)")
    p.add_argument("--features-col", default=None, help="with --train --format parquet: the images' column "
                   "(default features)")
    p.add_argument("--label-col", default=None,
                   help="with --train --format parquet: the labels' column (default label)")
    p.add_argument("--validation-fraction", type=float, default=None, help="with --train: validate on this fraction of "
                   "the rows (spread evenly, the same for a seed) instead of the first 5,000")
    p.add_argument("--validation-col", default=None,
                   help="with --train --format parquet: validate on the rows this boolean column marks")
    p.add_argument("--save-model", default=None, help="write the Spark ML model directory here (any Hadoop path)")
    p.add_argument("--model", default="lenet", metavar="NAME|PATH.json", help="lenet (SystemML's LeNet), resnet "
                   "(ResNet-8 with batch norm), or a network definition composed from the layers (docs/models.md)")
    p.add_argument("--image-shape", type=int_list, default=None, metavar="C,H,W", help="channels,height,width of the "
                   "--train rows' images (pixels channel-major); default: the model's (1,28,28 for the presets)")
    p.add_argument("--classes", type=positive_int, default=None,
                   help="labels are 0 .. classes - 1; default: the model's (10 for the presets)")
    p.add_argument("--mode", choices=list(fit.MODES), default="sync",
                   help="sync: synchronous SGD, one step of all workers' gradients at a time (default); async: "
                        "asynchronous SGD, each worker's gradient applied as it arrives (docs/async.md)")
    p.add_argument("--engine", choices=list(fit.ENGINES), help="per-step: a Spark job a step (broadcast, "
                   "mapPartitions, treeReduce); one-job: one job of long-lived tasks around a coordinator in the "
                   "driver; auto (default): one-job, unless --staging-dir, --backup-mode wait-all, --backup-combine "
                   "executors or too few task slots on a classic session ask for per-step")
    p.add_argument("--coordinator", choices=list(one_job.COORDINATOR_PLACES),
                   help="where the one-job engine's coordinator runs: client (the driver), cluster (one more task "
                        "of the job: for a Spark Connect client the executors cannot reach), auto (default: client "
                        "if the executors reach it)")
    for flag in ("--epochs", "--max-steps", "--workers"):
        p.add_argument(flag, type=positive_int)
    p.add_argument("--backup-workers", type=non_negative_int)
    p.add_argument("--backup-mode", choices=["cancel", "wait-all"],
                   help="cancel: go on at the N-th result; wait-all: wait for every task, keep the first N")
    p.add_argument("--backup-combine", choices=["driver", "executors"],
                   help="where kept gradients are added: driver (a running sum) or executors (a job over "
                        "the kept tasks' cached results; for tens of workers and more)")
    p.add_argument("--batch-size", type=positive_int, help="per worker")
    for flag in ("--lr", "--momentum", "--lr-decay", "--l2"):
        p.add_argument(flag, type=finite_float)
    p.add_argument("--warmup-steps", type=non_negative_int)
    p.add_argument("--lr-schedule", choices=["exponential", "cosine"],
                   help="exponential: lr x lr-decay per epoch (default); cosine: per step, to 0 at the last step")
    p.add_argument("--lr-scaling", choices=["none", "linear"], default="none",
                   help="linear: lr x (workers x batch size / 64), Goyal et al. 2017")
    p.add_argument("--seed", type=int)
    p.add_argument("--limit-train", type=positive_int, default=None, help="use the first N training images")
    p.add_argument("--validate-every", type=non_negative_int)
    p.add_argument("--early-stopping-patience", type=non_negative_int, metavar="N",
                   help="stop once the validation metric has not improved for N validations in a row (every "
                        "--validate-every steps and at each epoch's end) and keep the best parameters; 0: off")
    p.add_argument("--early-stopping-min-delta", type=non_negative_float, metavar="X",
                   help="early stopping: an improvement is a change of more than X (default 0)")
    p.add_argument("--early-stopping-metric", choices=["accuracy", "loss"],
                   help="early stopping watches the validation accuracy (default) or loss")
    p.add_argument("--metrics", default=None, help="write one JSON object per step to this file")
    p.add_argument("--summary", default=None, help="write one JSON object with the run's results")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-every", type=non_negative_int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument("--model-out", default=None, help="save the trained parameters to this .npz")
    p.add_argument("--straggler-prob", type=probability, default=0.0)
    p.add_argument("--straggler-delay", type=non_negative_float, default=0.0, help="seconds")
    p.add_argument("--slow-partitions", type=int_list, default=(),
                   help="comma-separated partitions that always straggle")
    p.add_argument("--task-failure-prob", type=probability, default=0.0,
                   help="experiments: each gradient task attempt fails with this probability (Spark retries it)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--mlflow", action="store_true", help="log the run to MLflow (needs mlflow; MLFLOW_TRACKING_URI "
                   "says where): params, step and validation metrics, the summary, plots and the model; a run already "
                   "active (MLFLOW_RUN_ID) is logged into without the flag")
    p.add_argument("--mlflow-experiment", default=None, metavar="NAME",
                   help="the MLflow experiment of the run (implies --mlflow)")
    args = p.parse_args(argv)
    if args.mode == "async":  # what the asynchronous mode has no use for is refused, not ignored
        if args.backup_workers:
            try:
                fit.check_mode(args.mode, config.BackupConfig(workers=args.backup_workers), config.SGDConfig(), None,
                               fit.FLAGS)
            except config.ConfigError as e:
                p.error(str(e))
        for flag in ("backup_mode", "backup_combine", "validate_every", "early_stopping_patience",
                     "early_stopping_min_delta", "early_stopping_metric"):
            if getattr(args, flag) is not None:
                p.error(f"--{flag.replace('_', '-')}: not with --mode async (it validates once, at the end, and has "
                        f"no backup workers)")
    if args.resume and not args.checkpoint_dir:
        p.error("--resume needs --checkpoint-dir")
    if args.checkpoint_every and not args.checkpoint_dir:
        p.error("--checkpoint-every needs --checkpoint-dir")
    if args.train and (args.data_dir or args.limit_train):
        p.error("--train reads its own data: it goes without --data-dir and --limit-train")
    if args.staging_dir and not args.train:
        p.error("--staging-dir needs --train")
    for flag in ("features_col", "label_col", "validation_col"):
        if getattr(args, flag) and args.format != "parquet":
            p.error(f"--{flag.replace('_', '-')} needs --train with --format parquet (IDX and CSV have fixed columns)")
    if args.validation_fraction is not None and not args.train:
        p.error("--validation-fraction needs --train (the bundled MNIST validates on its first 5,000 images)")
    if args.validation_fraction is not None and not 0 < args.validation_fraction < 1:
        p.error(f"argument --validation-fraction: must be in (0, 1), got {args.validation_fraction}")
    if args.validation_fraction is not None and args.validation_col:
        p.error("--validation-fraction and --validation-col: give one")
    if args.pixel_range and not args.train:
        p.error("--pixel-range needs --train (the MNIST IDX files hold bytes 0..255)")
    if args.test and not args.train:
        p.error("--test needs --train")
    if args.train and args.format != "idx" and not args.test:
        p.error(f"--format {args.format} needs --test as well as --train")
    if args.data_dir:
        try:
            if not Path(args.data_dir).is_dir():
                p.error(f"argument --data-dir: {args.data_dir}: no such directory")
        except OSError as e:  # e.g. a folder above it may not be entered
            p.error(f"argument --data-dir: {args.data_dir}: {e.strerror}")
    if args.mlflow_experiment is not None and not args.mlflow_experiment.strip():
        p.error("argument --mlflow-experiment: must name an experiment, got ''")
    if args.conf and not Path(args.conf).is_file():
        p.error(f"argument --conf: {args.conf}: no such file")
    return args


#: the flags that set the TrainRun, SGDConfig or BackupConfig field (``backup_`` + field) of their own name
SAME_NAME = ("model", "classes", "epochs", "max_steps", "workers", "batch_size", "lr", "momentum", "lr_decay", "l2",
             "warmup_steps", "lr_schedule", "seed", "validate_every", "backup_workers", "mode", "engine", "coordinator",
             "early_stopping_patience", "early_stopping_min_delta", "early_stopping_metric", "backup_mode",
             "backup_combine", "lr_scaling", "master", "data_dir", "limit_train", "save_model", "staging_dir",
             "pixel_range", "features_col", "label_col", "validation_fraction", "validation_col", "checkpoint_dir",
             "checkpoint_every", "resume", "metrics", "summary", "model_out", "mlflow", "mlflow_experiment")


def train_run(args) -> runs.TrainRun:
    """conf/training.json, then the flags given on the command line."""
    conf = config.read_training_conf(args.training_conf)
    base = runs.TrainRun(config=conf.sgd, backup=conf.backup, workers=conf.workers)
    straggler = StragglerModel(args.straggler_prob, args.straggler_delay, args.slow_partitions, args.task_failure_prob)
    return runs.with_flags(base, **{name: getattr(args, name) for name in SAME_NAME}, straggler=straggler,
                           image_shape=tuple(args.image_shape) if args.image_shape else None, spark_conf=args.conf,
                           train_path=args.train, test_path=args.test, data_format=args.format,
                           progress=not args.no_progress)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its connection chatter is not for users
    try:
        summary = runs.train(train_run(args))
    except tuple(EXIT_STATUS) as e:
        print(f"train_lenet: error: {e}", file=sys.stderr)
        return next(status for error, status in EXIT_STATUS.items() if isinstance(e, error))
    if summary["mode"] == "async":
        staleness = ("" if summary["staleness_mean"] is None else f", staleness mean {summary['staleness_mean']:.2f} "
                     f"p90 {summary['staleness_p90']:.0f} max {summary['staleness_max']}")
        print(f"updates {summary['updates']}, {summary['train_seconds']:.1f} s, {summary['examples_per_second']:.0f} "
              f"examples/s, {summary['updates_per_second']:.1f} updates/s{staleness}")
    else:
        print(f"steps {summary['steps']}, {summary['train_seconds']:.1f} s, {summary['examples_per_second']:.0f} "
              f"examples/s, median step {summary['step_seconds_median'] * 1000:.0f} ms")
    if summary.get("stopped_early"):
        print(f"stopped early after step {summary['stopped_step']}; the best validation "
              f"{summary['early_stopping_metric']} was {summary['best_metric']:.4f} at step {summary['best_step']}")
    if summary["validation_accuracy"] is not None:
        print(f"validation accuracy: {summary['validation_accuracy']:.4f}")
    print(f"test accuracy: {summary['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

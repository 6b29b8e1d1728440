"""Backup workers against stragglers: b = 0, 1, 2, ... and Spark speculation, side by side.

Writes OUT/straggler_experiment.json (step-time distributions, validation accuracy against
wall-clock time) and two PNG plots in the spirit of Chen et al. 2016, figures 3 and 4.

    python jobs/straggler_experiment.py --workers 4 --backup 0,1,2 --straggler-prob 0.1 \
        --straggler-delay 2 --steps 40 --out-dir out/straggler
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "jobs"))

from train_lenet import Parser, finite_float, non_negative_int, positive_int, probability  # noqa: E402

from mnist_lenet_spark import data, plots, training  # noqa: E402
from mnist_lenet_spark.straggler import StragglerModel  # noqa: E402


def parse_args(argv=None):
    p = Parser(prog="straggler_experiment", description=__doc__.splitlines()[0])
    p.add_argument("--master", default="local[2]")
    p.add_argument("--workers", type=positive_int, default=4, help="N: gradients used per step")
    p.add_argument("--backup", default="0,1,2", help="comma-separated backup worker counts b to compare")
    p.add_argument("--no-speculation", action="store_true", help="skip the Spark speculation run (b = 0)")
    p.add_argument("--no-step-signal", action="store_true",
                   help="late tasks are not told their step is closed; only Spark's cancel stops them")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--steps", type=positive_int, default=40)
    p.add_argument("--straggler-prob", type=probability, default=0.1)
    p.add_argument("--straggler-delay", type=finite_float, default=2.0)
    p.add_argument("--slow-partitions", default="")
    p.add_argument("--validate-every", type=non_negative_int, default=10)
    p.add_argument("--validation-size", type=positive_int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="out/straggler")
    args = p.parse_args(argv)
    try:
        args.backup = [int(v) for v in args.backup.split(",") if v.strip()]
        args.slow_partitions = tuple(int(v) for v in args.slow_partitions.split(",") if v.strip())
    except ValueError:
        p.error("argument --backup / --slow-partitions: expected integers separated by commas")
    if not args.backup or min(args.backup) < 0:
        p.error(f"argument --backup: expected counts >= 0, got {args.backup}")
    if args.straggler_delay < 0:
        p.error(f"argument --straggler-delay: must be >= 0, got {args.straggler_delay}")
    return args


def run_config(spark, args, mnist, backup_workers: int) -> dict:
    from mnist_lenet_spark import spark as msp
    straggler = StragglerModel(args.straggler_prob, args.straggler_delay, args.slow_partitions, args.seed)
    sgd = msp.SyncSGD(spark, workers=args.workers, batch_size=args.batch_size, seed=args.seed,
                      validate_every=args.validate_every, backup_workers=backup_workers,
                      straggler=straggler if straggler.active else None, backup_signal=not args.no_step_signal)
    val = (mnist.validation.images[:args.validation_size], mnist.validation.labels[:args.validation_size])
    result = sgd.fit(mnist.train.images, mnist.train.labels, max_steps=args.steps, validation_data=val)
    times = [h["seconds"] for h in result.history]
    wall = np.cumsum(times)
    accuracy = [(float(wall[v["step"] - 1]), v["accuracy"]) for v in result.validation]
    return {"backup_workers": backup_workers, "step_seconds": times,
            "step_seconds_mean": float(np.mean(times)), "step_seconds_median": float(np.median(times)),
            "step_seconds_p90": float(np.percentile(times, 90)), "train_seconds": float(wall[-1]),
            "dropped_tasks": sum(len(h.get("dropped", [])) for h in result.history),
            # from the N-th result's arrival to the return of the step (the next launch follows the update)
            "close_seconds_median": float(np.median([h["close_seconds"] for h in result.history]))
            if backup_workers else None,
            "accuracy_vs_time": accuracy}


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from mnist_lenet_spark import spark as msp
    try:
        mnist = data.load_mnist()
    except data.DataError as e:
        print(f"straggler_experiment: error: {e}", file=sys.stderr)
        return 2
    conf_file = ROOT / "conf" / "spark-defaults.conf"
    runs = {}
    spark = msp.session(args.master, conf_file=conf_file)
    spark.sparkContext.setLogLevel("ERROR")
    try:
        for b in args.backup:
            runs[f"b={b}"] = run_config(spark, args, mnist, b)
            print(f"b={b}: mean step {runs[f'b={b}']['step_seconds_mean']:.3f} s, "
                  f"p90 {runs[f'b={b}']['step_seconds_p90']:.3f} s", flush=True)
    finally:
        spark.stop()
    if not args.no_speculation:
        spark = msp.session(args.master, conf_file=conf_file,
                            conf={"spark.speculation": "true", "spark.speculation.interval": "50ms",
                                  "spark.speculation.quantile": "0.5", "spark.speculation.multiplier": "1.5"})
        spark.sparkContext.setLogLevel("ERROR")
        try:
            runs["speculation"] = run_config(spark, args, mnist, 0)
            print(f"speculation: mean step {runs['speculation']['step_seconds_mean']:.3f} s, "
                  f"p90 {runs['speculation']['step_seconds_p90']:.3f} s", flush=True)
        finally:
            spark.stop()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = (f"N={args.workers}, p={args.straggler_prob}, delay {args.straggler_delay:g} s, {args.master}")
    plots.step_time_distribution({k: r["step_seconds"] for k, r in runs.items()}, out / "step_times.png", title)
    plots.accuracy_vs_time({k: r["accuracy_vs_time"] for k, r in runs.items()}, out / "accuracy_vs_time.png", title)
    payload = {"settings": {k: v for k, v in vars(args).items()}, "runs": runs}
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, out / "straggler_experiment.json")
    base = runs.get("b=0")
    for k, r in runs.items():
        ratio = f" ({r['step_seconds_mean'] / base['step_seconds_mean']:.2f}x b=0)" if base else ""
        print(f"{k:12s} mean {r['step_seconds_mean']:.3f} s  p90 {r['step_seconds_p90']:.3f} s{ratio}")
    print(f"wrote {out / 'straggler_experiment.json'}, {out / 'step_times.png'}, {out / 'accuracy_vs_time.png'}")
    return payload


if __name__ == "__main__":
    outcome = main()
    sys.exit(outcome if isinstance(outcome, int) else 0)

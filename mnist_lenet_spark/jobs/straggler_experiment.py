"""Backup workers against stragglers: b = 0, 1, 2, ... and Spark speculation, side by side.

Writes OUT/straggler_experiment.json (step-time distributions, validation accuracy against wall-clock time) and two
PNG plots in the spirit of Chen et al. 2016, figures 3 and 4.

    python jobs/straggler_experiment.py --workers 4 --backup 0,1,2 --straggler-prob 0.1 \
        --straggler-delay 2 --steps 40 --out-dir out/straggler
    mnist-lenet-experiment ...   (the installed package's command; same flags)
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from mnist_lenet_spark import data
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.jobs import experiment
from mnist_lenet_spark.jobs.cli import Parser, int_list, non_negative_float, non_negative_int, positive_int, probability


def parse_args(argv=None):
    p = Parser(prog="straggler_experiment", description=__doc__.splitlines()[0])
    p.add_argument("--master", default="local[2]")
    p.add_argument("--workers", type=positive_int, default=4, help="N: gradients used per step")
    p.add_argument("--backup", type=int_list, default=(0, 1, 2), help="comma-separated backup worker counts b")
    p.add_argument("--no-speculation", action="store_true", help="skip the Spark speculation run (b = 0)")
    p.add_argument("--no-step-signal", action="store_true",
                   help="late tasks are not told their step is closed; only Spark's cancel stops them")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--steps", type=positive_int, default=40)
    p.add_argument("--straggler-prob", type=probability, default=0.1)
    p.add_argument("--straggler-delay", type=non_negative_float, default=2.0)
    p.add_argument("--slow-partitions", type=int_list, default=())
    p.add_argument("--validate-every", type=non_negative_int, default=10)
    p.add_argument("--validation-size", type=positive_int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="out/straggler")
    args = p.parse_args(argv)
    if not args.backup or min(args.backup) < 0:
        p.error(f"argument --backup: expected counts >= 0, got {args.backup}")
    return args


def experiment_of(args) -> experiment.Experiment:
    return experiment.Experiment(
        master=args.master, workers=args.workers, backup=args.backup, speculation=not args.no_speculation,
        step_signal=not args.no_step_signal, batch_size=args.batch_size, steps=args.steps, seed=args.seed,
        straggler=StragglerModel(args.straggler_prob, args.straggler_delay, args.slow_partitions),
        validate_every=args.validate_every, validation_size=args.validation_size, out_dir=args.out_dir)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        payload = experiment.run(experiment_of(args))
    except data.DataError as e:
        print(f"straggler_experiment: error: {e}", file=sys.stderr)
        return 2
    runs = payload["runs"]
    base = runs.get("b=0")
    for k, r in runs.items():
        ratio = f" ({r['step_seconds_mean'] / base['step_seconds_mean']:.2f}x b=0)" if base else ""
        print(f"{k:12s} mean {r['step_seconds_mean']:.3f} s  p90 {r['step_seconds_p90']:.3f} s{ratio}")
    out = Path(args.out_dir)
    print(f"wrote {out / 'straggler_experiment.json'}, {out / 'step_times.png'}, {out / 'accuracy_vs_time.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Backup workers: N = 4, p = 0.1, delay 2 s, 40 steps, side by side in one run.

Four experiments of ``mnist_lenet_spark.experiment`` (what jobs/straggler_experiment.py runs):
(1) local[2] with stragglers: b = 0, 1 and Spark speculation; (2) the same with the step signal
off (late tasks stop only when Spark cancels them), to show what the signal buys; (3) local[2]
without stragglers: b = 0, 1; (4) local[6] with stragglers, one task slot per task as on a cluster where each worker is its own
executor. Targets: (1) mean step with b = 1 <= 0.6x b = 0; (3) b = 1 <= 1.2x b = 0. Writes
benchmarks/results/backup.json and the plots under benchmarks/results/.

    python benchmarks/backup.py [--steps 40]
"""
from __future__ import annotations

import argparse

from common import RESULTS, save

from mnist_lenet_spark.experiment import Experiment, run
from mnist_lenet_spark.straggler import StragglerModel


def summary(payload):
    runs = payload["runs"]
    base = runs["b=0"]["step_seconds_mean"]
    return {k: {"mean": r["step_seconds_mean"], "p90": r["step_seconds_p90"], "median": r["step_seconds_median"],
                "mean_over_b0": r["step_seconds_mean"] / base, "close_seconds_median": r["close_seconds_median"]}
            for k, r in runs.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    stragglers, clean = StragglerModel(prob=0.1, delay=2.0), StragglerModel(prob=0.0, delay=2.0)

    def experiment(out, **kwargs):
        return summary(run(Experiment(workers=4, steps=args.steps, validate_every=0, out_dir=RESULTS / out,
                                      **kwargs)))
    out = {
        "local2_stragglers": experiment("backup_local2", backup=(0, 1), straggler=stragglers),
        "local2_stragglers_no_signal": experiment("backup_local2_no_signal", backup=(0, 1), straggler=stragglers,
                                                  speculation=False, step_signal=False),
        "local2_no_stragglers": experiment("backup_local2_clean", backup=(0, 1), straggler=clean, speculation=False),
        "local6_stragglers": experiment("backup_local6", backup=(0, 1, 2), straggler=stragglers, master="local[6]"),
    }
    for name, runs in out.items():
        print(name)
        for k, r in runs.items():
            close = f", N-th result to next launch {r['close_seconds_median'] * 1000:.0f} ms" \
                if r["close_seconds_median"] is not None else ""
            print(f"  {k:12s} mean {r['mean']:.3f} s ({r['mean_over_b0']:.2f}x b=0), p90 {r['p90']:.3f} s{close}")
    save("backup", out)


if __name__ == "__main__":
    main()

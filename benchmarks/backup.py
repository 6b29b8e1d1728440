"""Backup workers: N = 4, p = 0.1, delay 2 s, side by side in one run (100 steps for the headline, 40 else).

Beside each measured mean step of (1): the mean the straggler draws of that very run predict, with
the step held up by ``delay`` exactly when more than b of its N + b tasks drew a delay (each run's
other steps give its base time), and the long-run fraction of held-up steps from the binomial law;
so a reader can tell the mechanism from the luck of 100 draws.
Four experiments of ``mnist_lenet_spark.jobs.experiment`` (what jobs/straggler_experiment.py runs):
(1) local[2] with stragglers: b = 0, 1 and Spark speculation; (2) the same with the step signal
off (late tasks stop only when Spark cancels them), to show what the signal buys; (3) local[2]
without stragglers: b = 0, 1; (4) local[6] with stragglers, one task slot per task as on a cluster
where each worker is its own executor. Targets: (1) mean step with b = 1 <= 0.6x b = 0; (3) b = 1 <= 1.2x b = 0. Writes
benchmarks/results/backup.json and the plots under benchmarks/results/.

    python benchmarks/backup.py [--steps 100] [--other-steps 40]
"""
from __future__ import annotations

import argparse
import math

import numpy as np
from common import RESULTS, save

from mnist_lenet_spark import data
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.jobs.experiment import Experiment, run
from mnist_lenet_spark.loop import sharding


def held_up(straggler: StragglerModel, num_examples: int, workers: int, backup: int, steps: int, seed: int = 0,
            batch: int = 64) -> np.ndarray:
    """(steps,) bool: more than ``backup`` of the step's workers + backup tasks drew a delay."""
    shards, n = workers + backup, num_examples
    out, epoch = [], 0
    while len(out) < steps:
        for step in sharding.epoch_batches(n, shards, batch, seed, epoch):
            out.append(sum(straggler.delay_for(b.key) > 0 for b in step) > backup)
        epoch += 1
    return np.array(out[:steps])


def expectation(runs: dict, straggler: StragglerModel, workers: int) -> dict:
    """Per b: the fraction of held-up steps (these draws; binomial law) and the mean step they predict."""
    num_examples = len(data.load_mnist().train.labels)  # what Experiment trains on
    out = {}
    for key, r in runs.items():
        if not key.startswith("b="):
            continue
        b, seconds = int(key[2:]), np.array(r["step_seconds"])
        hit = held_up(straggler, num_examples, workers, b, len(seconds))
        base = float(np.mean(seconds[~hit])) if (~hit).any() else float("nan")
        p, tasks = straggler.prob, workers + b
        law = 1 - sum(math.comb(tasks, k) * p ** k * (1 - p) ** (tasks - k) for k in range(b + 1))
        out[key] = {"held_up_fraction_draws": float(hit.mean()), "held_up_fraction_law": law,
                    "base_seconds": base, "predicted_mean_seconds": base + straggler.delay * float(hit.mean()),
                    "measured_mean_seconds": float(seconds.mean())}
    return out


def summary(payload):
    runs = payload["runs"]
    base = runs["b=0"]["step_seconds_mean"]
    return {k: {"mean": r["step_seconds_mean"], "p90": r["step_seconds_p90"], "median": r["step_seconds_median"],
                "mean_over_b0": r["step_seconds_mean"] / base, "close_seconds_median": r["close_seconds_median"]}
            for k, r in runs.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="steps of the headline experiment (1)")
    ap.add_argument("--other-steps", type=int, default=40, help="steps of experiments (2)-(4)")
    args = ap.parse_args()
    stragglers, clean = StragglerModel(prob=0.1, delay=2.0), StragglerModel(prob=0.0, delay=2.0)

    def experiment(out, steps=args.other_steps, **kwargs):
        return summary(run(Experiment(workers=4, steps=steps, validate_every=0, out_dir=RESULTS / out,
                                      **kwargs)))
    headline = run(Experiment(workers=4, steps=args.steps, validate_every=0, out_dir=RESULTS / "backup_local2",
                              backup=(0, 1), straggler=stragglers))
    predicted = expectation(headline["runs"], stragglers, 4)
    out = {
        "local2_stragglers": summary(headline),
        "local2_stragglers_no_signal": experiment("backup_local2_no_signal", backup=(0, 1), straggler=stragglers,
                                                  speculation=False, step_signal=False),
        "local2_no_stragglers": experiment("backup_local2_clean", backup=(0, 1), straggler=clean, speculation=False),
        "local6_stragglers": experiment("backup_local6", backup=(0, 1, 2), straggler=stragglers, master="local[6]"),
    }
    out["local2_stragglers_expectation"] = predicted
    for key, e in predicted.items():
        print(f"  {key}: held up {e['held_up_fraction_draws']:.2f} of steps by the draws "
              f"({e['held_up_fraction_law']:.3f} in the long run); base {e['base_seconds']:.3f} s -> predicted "
              f"mean {e['predicted_mean_seconds']:.3f} s, measured {e['measured_mean_seconds']:.3f} s")
    for name, runs in out.items():
        if name.endswith("expectation"):
            continue
        print(name)
        for k, r in runs.items():
            close = f", N-th result to next launch {r['close_seconds_median'] * 1000:.0f} ms" \
                if r["close_seconds_median"] is not None else ""
            print(f"  {k:12s} mean {r['mean']:.3f} s ({r['mean_over_b0']:.2f}x b=0), p90 {r['p90']:.3f} s{close}")
    save("backup", out)


if __name__ == "__main__":
    main()

"""Start-up and warm-up of SyncSGD on local[2]: setup, the first step, steps 2-40 and 41-80, in fresh processes.

For 2 x 64 (80 steps; median of 3 fresh processes, and as many with the JVM's default tiered
compilation instead of conf/spark-defaults.conf's C1 only, alternating), 2 x 512 (20 steps) and
4 x 64 with one backup worker (40 steps), each the first fit of a new Python process and JVM,
as a user's first fit would be: the seconds to start the session, the setup
(``FitResult.setup_seconds``: the data broadcast and the warm-up job that readies the Python
workers), the first step, the median of steps 2-40 and of steps 41-80. Target: the first step
within 2x a steady step. Then the price of a C1-only JVM on JVM-heavy work: staging 275,000
DataFrame rows (5 x MNIST) in fresh processes with C1 only and with tiered compilation,
alternating, twice each. Writes benchmarks/results/warmup.json.

    python benchmarks/warmup.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from common import in_fresh_process, median_of, save

from mnist_lenet_spark import data, session
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.cluster import staging


def profile(batch: int, steps: int, workers: int = 2, backup: int = 0, java_options: str | None = None) -> dict:
    """One fit in this (fresh) process: session start, setup, first step, steps 2-40 and 41-80."""
    mnist = data.load_mnist()
    t0 = time.perf_counter()
    spark = session.session("local[2]", conf={"spark.driver.extraJavaOptions": java_options} if java_options else None)
    spark.sparkContext.parallelize([0], 1).count()  # the JVM is up and has run a job
    start = time.perf_counter() - t0
    try:
        result = msp.SyncSGD(spark, workers, batch_size=batch, backup_workers=backup).fit(
            mnist.train.images, mnist.train.labels, max_steps=steps)
    finally:
        spark.stop()
    seconds = [h["seconds"] for h in result.history]
    out = {"session_seconds": start, "setup_seconds": result.setup_seconds, "first_step_seconds": seconds[0],
           "steps_2_40_median_seconds": statistics.median(seconds[1:40])}
    if steps > 40:
        out["steps_41_80_median_seconds"] = statistics.median(seconds[40:80])
    steady = out.get("steps_41_80_median_seconds", out["steps_2_40_median_seconds"])
    out["first_over_steady"] = seconds[0] / steady
    return out


def staging_seconds(java_options: str, copies: int = 5) -> dict:
    """Staging ``copies`` x MNIST's rows in this (fresh) process."""
    from dataframe import training_rows
    spark = session.session("local[2]", conf={"spark.driver.extraJavaOptions": java_options})
    try:
        t0 = time.perf_counter()
        staged = staging.stage(training_rows(spark, copies), "features", "label", 2, staging.staging_directory(None))
        seconds = time.perf_counter() - t0
        staging.unstage(spark.sparkContext, staged.source)
        return {"seconds": seconds}
    finally:
        spark.stop()


def fresh(kind: str, **kwargs) -> dict:
    """``kind`` (profile or staging_seconds) run in a new Python process: JVM options only apply to a new JVM,
    and a first fit is only a first fit in a new one."""
    return in_fresh_process(__file__, "--child", json.dumps({"kind": kind, **kwargs}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per 2 x 64 configuration")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(globals()[job.pop("kind")](**job)))
        return
    c1, tiered = [], []
    for _ in range(args.rounds):  # alternate, so both see the same machine load
        c1.append(fresh("profile", batch=64, steps=80))
        tiered.append(fresh("profile", batch=64, steps=80, java_options="-XX:TieredStopAtLevel=4"))
    result = {"2x64": median_of(c1), "2x64_tiered_jvm": median_of(tiered),
              "2x512": fresh("profile", batch=512, steps=20),
              "4x64_b1": fresh("profile", batch=64, steps=40, workers=4, backup=1)}
    for name, r in result.items():
        later = f", steps 41-80 {r['steps_41_80_median_seconds'] * 1e3:.0f} ms" \
            if "steps_41_80_median_seconds" in r else ""
        print(f"{name}: session {r['session_seconds']:.1f} s, setup {r['setup_seconds']:.2f} s, first step "
              f"{r['first_step_seconds']:.2f} s ({r['first_over_steady']:.1f}x steady), steps 2-40 "
              f"{r['steps_2_40_median_seconds'] * 1e3:.0f} ms{later}")
    times = {"c1": [], "tiered": []}
    for _ in range(2):
        times["c1"].append(fresh("staging_seconds", java_options="-XX:TieredStopAtLevel=1")["seconds"])
        times["tiered"].append(fresh("staging_seconds", java_options="-XX:TieredStopAtLevel=4")["seconds"])
    price = {"staging_275000_rows_c1_seconds": statistics.median(times["c1"]),
             "staging_275000_rows_tiered_seconds": statistics.median(times["tiered"])}
    price["c1_over_tiered"] = price["staging_275000_rows_c1_seconds"] / price["staging_275000_rows_tiered_seconds"]
    print(f"staging 275,000 rows: C1 only {price['staging_275000_rows_c1_seconds']:.1f} s, tiered (C2) "
          f"{price['staging_275000_rows_tiered_seconds']:.1f} s ({price['c1_over_tiered']:.2f}x)")
    result["c1_price"] = price
    save("warmup", result)


if __name__ == "__main__":
    main()

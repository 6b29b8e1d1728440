"""Start-up and warm-up of SyncSGD on local[2]: setup, the first step, steps 2-40 and 41-80, in fresh sessions.

For 2 x 64 (80 steps), 2 x 512 (20 steps) and 4 x 64 with one backup worker (40 steps), each in
a new SparkSession as a user's first fit would be: the seconds to start the session, the setup
(``FitResult.setup_seconds``: the data broadcast and the warm-up job that readies the Python
workers), the first step, the median of steps 2-40 and of steps 41-80. Target: the first step
within 2x a steady step. Writes benchmarks/results/warmup.json.

    python benchmarks/warmup.py
"""
from __future__ import annotations

import statistics
import time

from common import save

from mnist_lenet_spark import data, session
from mnist_lenet_spark import spark as msp


def profile(batch: int, steps: int, workers: int = 2, backup: int = 0) -> dict:
    mnist = data.load_mnist()
    t0 = time.perf_counter()
    spark = session.session("local[2]")
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


def main():
    result = {"2x64": profile(64, 80), "2x512": profile(512, 20), "4x64_b1": profile(64, 40, 4, 1)}
    for name, r in result.items():
        later = f", steps 41-80 {r['steps_41_80_median_seconds'] * 1e3:.0f} ms" \
            if "steps_41_80_median_seconds" in r else ""
        print(f"{name}: session {r['session_seconds']:.1f} s, setup {r['setup_seconds']:.2f} s, first step {r['first_step_seconds']:.2f} s "
              f"({r['first_over_steady']:.1f}x steady), steps 2-40 {r['steps_2_40_median_seconds'] * 1e3:.0f} ms"
              f"{later}")
    save("warmup", result)


if __name__ == "__main__":
    main()

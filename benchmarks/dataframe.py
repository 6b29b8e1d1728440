"""The DataFrame path (rows staged as shards on the executors' side) against the array path, on local[2].

(1) In one session, alternating: the median step of ``SyncSGD`` 2 x 64 on MNIST's 55,000
training rows given as arrays (broadcast) and given as a DataFrame (staged); target: staged /
arrays <= 1.05. (2) In fresh driver processes (alternating, twice each), fit from a DataFrame of MNIST and of 5 x MNIST
(275,000 rows): peak RSS of the Python driver and the median step; targets: RSS grows by less
than 64 MB, the step by less than 10 %. The staging pass is reported beside. (3) ``transform``
throughput in images/s against LeNet's ``predict`` in one process. Writes
benchmarks/results/dataframe.json.

    python benchmarks/dataframe.py [--steps 40] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

from common import in_fresh_process, median_of, save

from mnist_lenet_spark import data, models, readers, session
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.cluster import staging
from mnist_lenet_spark.executor import inference, tasks

LENET = models.network_from("lenet")

WARMUP = 5


def median_step(result) -> float:
    return statistics.median(h["seconds"] for h in result.history[WARMUP:])


def training_rows(spark, copies: int = 1):
    """MNIST's 55,000 training rows (the first 5,000 are validation), ``copies`` times, read by executors."""
    rows = readers.with_validation_flag(spark, readers.read_mnist(spark, str(data.BUNDLED_DIR)),
                                        data.VALIDATION_SIZE)
    rows = rows.filter("not is_validation").drop("is_validation")
    out = rows
    for _ in range(copies - 1):
        out = out.union(rows)
    return out


def arrays_vs_dataframe(steps: int, rounds: int) -> dict:
    spark = session.session("local[2]")
    sgd = msp.SyncSGD(spark, 2, batch_size=64)
    mnist = data.load_mnist()
    staged = staging.stage(training_rows(spark), "features", "label", 2, staging.staging_directory(None))
    try:
        arrays, frames = [], []
        for _ in range(rounds):  # alternate, so both see the same machine load
            arrays.append(median_step(sgd.fit(mnist.train.images, mnist.train.labels, max_steps=steps + WARMUP)))
            frames.append(median_step(sgd.fit_data(staged.source, staged.num_examples, max_steps=steps + WARMUP)))
    finally:
        staging.unstage(spark.sparkContext, staged.source)
        spark.stop()
    a, f = statistics.median(arrays), statistics.median(frames)
    return {"step_arrays_ms": a * 1e3, "step_dataframe_ms": f * 1e3, "dataframe_over_arrays": f / a,
            "staging_seconds_55000": staged.seconds}


def child(copies: int, steps: int) -> None:
    """One fit from a DataFrame of ``copies`` x MNIST in this fresh process; prints a JSON line."""
    spark = session.session("local[2]")
    sgd = msp.SyncSGD(spark, 2, batch_size=64)
    result, staging_seconds = staging.fit_dataframes(sgd, training_rows(spark, copies), None, "features", "label",
                                                     max_steps=steps + WARMUP)
    spark.stop()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"rows": 55000 * copies, "driver_peak_rss_mb": peak_mb, "step_ms": median_step(result) * 1e3,
                      "staging_seconds": staging_seconds}))


def scale(steps: int, rounds: int = 2) -> dict:
    """1x and 5x alternately, ``rounds`` fresh processes each; the medians of each size."""
    runs = {1: [], 5: []}
    for _ in range(rounds):
        for copies in (1, 5):
            runs[copies].append(in_fresh_process(__file__, "--child", str(copies), "--steps", str(steps)))
    out = {f"{copies}x": median_of(results) for copies, results in runs.items()}
    out["rss_growth_mb"] = out["5x"]["driver_peak_rss_mb"] - out["1x"]["driver_peak_rss_mb"]
    out["step_5x_over_1x"] = out["5x"]["step_ms"] / out["1x"]["step_ms"]
    return out


def transform_throughput() -> dict:
    spark = session.session("local[2]")
    mnist = data.load_mnist()
    from mnist_lenet_spark.ml import LeNetClassificationModel
    model = LeNetClassificationModel(LENET.init_params(0))
    test = readers.read_mnist(spark, str(data.BUNDLED_DIR), split="test").repartition(2).cache()
    test.count()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        model.transform(test).select("prediction").write.format("noop").mode("overwrite").save()
        times.append(time.perf_counter() - t0)
    spark.stop()
    tasks.tune_process(1)
    t0 = time.perf_counter()
    inference.count_correct(LENET, model.weights, mnist.test.images, mnist.test.labels)
    local = time.perf_counter() - t0
    n = len(mnist.test.labels)
    return {"transform_images_per_second": n / statistics.median(times), "predict_one_process_images_per_second":
            n / local}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.steps)
    result = {"arrays_vs_dataframe": arrays_vs_dataframe(args.steps, args.rounds), "scale": scale(args.steps),
              "transform": transform_throughput()}
    r, s, t = result["arrays_vs_dataframe"], result["scale"], result["transform"]
    print(f"step 2 x 64: arrays {r['step_arrays_ms']:.1f} ms, DataFrame {r['step_dataframe_ms']:.1f} ms = "
          f"{r['dataframe_over_arrays']:.3f}x (target <= 1.05); staging 55,000 rows {r['staging_seconds_55000']:.1f} s")
    print(f"5x MNIST vs 1x: driver peak RSS {s['1x']['driver_peak_rss_mb']:.0f} -> {s['5x']['driver_peak_rss_mb']:.0f} "
          f"MB (+{s['rss_growth_mb']:.0f} MB, target < 64), step {s['1x']['step_ms']:.1f} -> {s['5x']['step_ms']:.1f} "
          f"ms ({s['step_5x_over_1x']:.3f}x, target < 1.10), staging {s['1x']['staging_seconds']:.1f} -> "
          f"{s['5x']['staging_seconds']:.1f} s")
    print(f"transform: {t['transform_images_per_second']:.0f} images/s on local[2]; LeNet's predict in one process: "
          f"{t['predict_one_process_images_per_second']:.0f} images/s")
    save("dataframe", result)


if __name__ == "__main__":
    main()

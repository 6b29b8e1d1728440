"""Spark step overhead on local[2], against the floor of an empty Python job at default settings.

In one run: (1) with Spark's *default* settings, the median time of an empty Python
``mapPartitions`` job over 2 partitions (iterator drained): the floor every step pays;
(2) outside Spark, the median time of one worker's gradient (batch 64, one BLAS thread);
(3) with the tuned settings of conf/spark-defaults.conf, the median step of ``SyncSGD.fit``
(2 workers x 64) on the full training set and on ``--limit-train 5500``.
Step overhead = (3) - (2); the target is <= 1.25x the floor. Data movement: full / 5500 <= 1.10.

    python benchmarks/spark_step.py [--steps 40]
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
from common import ROOT, median_seconds, save

from mnist_lenet_spark import data, sharding, tasks
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.models import base, lenet


def empty_job_floor(jobs: int) -> float:
    from pyspark import SparkConf, SparkContext
    sc = SparkContext(conf=SparkConf().setMaster("local[2]").setAppName("floor"))
    sc.setLogLevel("ERROR")
    rdd = sc.parallelize([0, 1], 2)

    def drain(it):
        for _ in it:
            pass
        return iter(())
    floor = median_seconds(lambda: rdd.mapPartitions(drain).count(), jobs, warmup=5)
    sc.stop()
    return floor


def gradient_seconds(mnist, steps: int) -> float:
    tasks.tune_process(1)
    params = lenet.init_params(0)
    spec = base.param_spec(params)
    flat = base.flatten(params, spec)
    batch = [sharding.ShardBatch(sharding.TaskKey(0, 0, 0, 0), np.arange(64))]
    return median_seconds(lambda: tasks.sum_batches(lenet, spec, flat, mnist.train.images, mnist.train.labels,
                                                    batch, dropout=True), steps)


def step_seconds(spark, images, labels, steps: int, workers: int = 2, batch: int = 64) -> float:
    sgd = msp.SyncSGD(spark, workers=workers, batch_size=batch, seed=0)
    result = sgd.fit(images, labels, max_steps=steps + 5)
    return statistics.median(h["seconds"] for h in result.history[5:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    mnist = data.load_mnist()
    floor = empty_job_floor(args.steps)
    compute = gradient_seconds(mnist, args.steps)
    spark = msp.session("local[2]", conf_file=ROOT / "conf" / "spark-defaults.conf")
    spark.sparkContext.setLogLevel("ERROR")
    full, small = [], []
    for _ in range(3):  # alternate the two data sizes so both see the same machine load
        full.append(step_seconds(spark, mnist.train.images, mnist.train.labels, args.steps))
        small.append(step_seconds(spark, mnist.train.images[:5500], mnist.train.labels[:5500], args.steps))
    spark.stop()
    step_full, step_small = statistics.median(full), statistics.median(small)
    overhead = step_full - compute
    result = {"floor_ms": floor * 1e3, "gradient_ms": compute * 1e3, "step_full_ms": step_full * 1e3,
              "step_5500_ms": step_small * 1e3, "overhead_ms": overhead * 1e3,
              "overhead_over_floor": overhead / floor, "full_over_5500": step_full / step_small}
    print(f"floor (empty job, default settings): {floor * 1e3:6.1f} ms")
    print(f"one worker's gradient, outside Spark: {compute * 1e3:6.1f} ms")
    print(f"step, 2 x 64, full training set:     {step_full * 1e3:6.1f} ms")
    print(f"step, 2 x 64, --limit-train 5500:    {step_small * 1e3:6.1f} ms")
    print(f"step overhead: {overhead * 1e3:.1f} ms = {overhead / floor:.2f}x the floor (target <= 1.25x)")
    print(f"full / 5500 step time: {step_full / step_small:.2f} (target <= 1.10)")
    save("spark_step", result)


if __name__ == "__main__":
    main()

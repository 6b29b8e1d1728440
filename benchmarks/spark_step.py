"""Spark's tax on one synchronous step (local[2], 2 x 64): against the empty-job floor, and where it goes.

In one run:
(1) with Spark's *default* settings (in a child process, so that its JVM starts with no options),
    the median time of an empty Python ``mapPartitions`` job over 2 partitions (iterator drained):
    the floor every per-step job pays;
(2) with the settings of conf/spark-defaults.conf, ``SyncSGD.fit`` (2 workers x 64) for 80 steps,
    three times: the median of steps 1-40 and of steps 41-80, and the step overhead = step - the
    slower task's own seconds (measured inside the task, so two workers sharing the machine do not
    count as overhead); the target is overhead <= 1.0x the floor;
(3) the profile of a step: the driver's Python (cProfile over steps 41-80, grouped: py4j calls,
    closure pickling, broadcast write and destroy, results read, the update) and the JVM's part
    by difference, from jobs that add one piece of a step at a time to an empty job on the
    same reused RDD (broadcast of the 6.6 MB parameters read by the tasks; a 6.6 MB result per
    task through ``treeReduce``);
(4) full training set vs ``--limit-train 5500``: per-step data movement must not grow with the
    data set (target <= 1.10).

    python benchmarks/spark_step.py [--steps 80]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
from functools import partial
from operator import add

import numpy as np
from common import in_fresh_process, median_seconds, save

from mnist_lenet_spark import data, models
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.models import base

PARAMS = sum(int(np.prod(shape)) for _, shape in base.param_spec(models.network_from("lenet").init_params(0)))


def empty_job_floor(jobs: int) -> float:
    from pyspark import SparkConf, SparkContext
    sc = SparkContext(conf=SparkConf().setMaster("local[2]").setAppName("floor"))
    sc.setLogLevel("ERROR")
    rdd = sc.parallelize([0, 1], 2)
    floor = median_seconds(lambda: rdd.mapPartitions(_drain).count(), jobs, warmup=5)
    sc.stop()
    return floor


def _drain(it):
    for _ in it:
        pass
    return iter(())


def _read_params(bc, it):
    for _ in it:
        pass
    bc.value  # noqa: B018  (the worker reads the broadcast, as a step does)
    return iter(())


def _return_gradient(bc, it):
    for _ in it:
        pass
    yield bc.value * np.float32(2)  # (P,): a gradient-sized result


def ladder(sc, jobs: int) -> dict:
    """Median ms of jobs that add one piece of a step at a time, on one reused RDD of 2 partitions."""
    rdd = sc.parallelize([0, 1], 2)
    flat = np.random.default_rng(0).standard_normal(PARAMS).astype(np.float32)  # (P,)

    def with_params(job):
        bc = sc.broadcast(flat)
        try:
            job(bc)
        finally:
            bc.destroy(blocking=False)
    pieces = {
        "empty job": lambda: rdd.mapPartitions(_drain).count(),
        "+ parameters broadcast and read": lambda: with_params(
            lambda bc: rdd.mapPartitions(partial(_read_params, bc)).count()),
        "+ a gradient-sized result per task (treeReduce)": lambda: with_params(
            lambda bc: rdd.mapPartitions(partial(_return_gradient, bc)).treeReduce(add)),
    }
    return {name: median_seconds(job, jobs, warmup=10) * 1e3 for name, job in pieces.items()}


DRIVER_GROUPS = {  # (file, function) in cProfile -> what it is, for the driver's part of a step
    ("clientserver.py", "send_command"): "py4j calls",
    ("cloudpickle.py", "dumps"): "closure pickling (cloudpickle)",
    ("broadcast.py", "__init__"): "broadcast write (pickle to a file, JVM reads it)",
    ("broadcast.py", "destroy"): "broadcast destroy",
    ("util.py", "_load_from_socket"): "results: socket from the JVM opened",
    ("serializers.py", "load_stream"): "results read and unpickled",
    ("training.py", "loss_and_gradient"): "mean gradient + L2",
    ("training.py", "_check_finite"): "finite check",
    ("sgd_nesterov.py", "update"): "the update (Nesterov)",
}


def driver_profile(sgd, images, labels, steps: int) -> dict:
    """cProfile of SyncSGD's driver over steps after the first ``steps``: ms per step of each group."""
    prof = cProfile.Profile()
    done = [0]

    def on_step(record):
        done[0] += 1
        if done[0] == steps:
            prof.enable()
    result = sgd.fit(images, labels, max_steps=2 * steps, on_step=on_step)
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (calls, primitive, tottime, cumtime, callers)}
    out = {}
    for (file, name), label in DRIVER_GROUPS.items():
        found = [(v[0], v[3]) for (f, _, fn), v in stats.items() if fn == name and f.endswith(file)]
        calls, seconds = sum(c for c, _ in found), sum(s for _, s in found)
        out[label] = {"calls_per_step": calls / steps, "ms_per_step": seconds * 1e3 / steps}
    later = result.history[steps:]
    out["step (driver clock)"] = {"ms_per_step": statistics.median(h["step_seconds"] for h in later) * 1e3}
    out["slower task's own time"] = {"ms_per_step": statistics.median(h["task_seconds"] for h in later) * 1e3}
    return out


def run_steps(spark, images, labels, steps: int) -> dict:
    result = msp.SyncSGD(spark, 2, batch_size=64, seed=0).fit(images, labels, max_steps=steps)
    seconds = [h["seconds"] for h in result.history]
    half = steps // 2
    later = result.history[half:]
    return {"setup": result.setup_seconds, "first": seconds[0],
            "early": statistics.median(seconds[1:half]), "steady": statistics.median(seconds[half:]),
            "overhead": statistics.median(h["seconds"] - h["task_seconds"] for h in later),
            "task": statistics.median(h["task_seconds"] for h in later)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--floor-jobs", type=int, help=argparse.SUPPRESS)  # the child that measures the floor
    args = ap.parse_args()
    if args.floor_jobs:
        print(empty_job_floor(args.floor_jobs))
        return
    mnist = data.load_mnist()
    floor = in_fresh_process(__file__, "--floor-jobs", "40")  # its JVM with Spark's defaults, ours with conf/'s
    spark = msp.session("local[2]")
    spark.sparkContext.setLogLevel("ERROR")
    runs, small = [], []
    for _ in range(3):  # alternate the two data sizes so both see the same machine load
        runs.append(run_steps(spark, mnist.train.images, mnist.train.labels, args.steps))
        small.append(run_steps(spark, mnist.train.images[:5500], mnist.train.labels[:5500], args.steps)["steady"])
    pieces = ladder(spark.sparkContext, 40)
    profile = driver_profile(msp.SyncSGD(spark, 2, batch_size=64, seed=0), mnist.train.images, mnist.train.labels,
                             args.steps // 2)
    spark.stop()

    def med(key):
        return statistics.median(r[key] for r in runs)
    steady, overhead = med("steady"), med("overhead")
    result = {"floor_default_settings_ms": floor * 1e3, "steps_1_40_first_ms": med("first") * 1e3,
              "steps_2_40_median_ms": med("early") * 1e3, "steps_41_80_median_ms": steady * 1e3,
              "task_seconds_median_ms": med("task") * 1e3, "overhead_ms": overhead * 1e3,
              "overhead_over_floor": overhead / floor, "full_over_5500": steady / statistics.median(small),
              "early_over_steady": med("early") / steady, "jobs_ms": pieces, "driver_profile": profile}
    print(f"floor (empty Python job, Spark's default settings): {floor * 1e3:6.1f} ms")
    print(f"step 2 x 64: first {med('first') * 1e3:.0f} ms, steps 2-40 {med('early') * 1e3:.1f} ms, "
          f"steps 41-80 {steady * 1e3:.1f} ms ({med('early') / steady:.2f}x)")
    print(f"the slower task's own time {med('task') * 1e3:.1f} ms; step overhead {overhead * 1e3:.1f} ms "
          f"= {overhead / floor:.2f}x the floor (target <= 1.0x)")
    print(f"full / 5500 step time: {result['full_over_5500']:.2f} (target <= 1.10)")
    print("jobs on the tuned settings, one piece of a step added at a time:")
    for name, ms in pieces.items():
        print(f"  {name:50s} {ms:6.1f} ms")
    print("driver, per step (steps 41-80):")
    for name, r in profile.items():
        calls = f" ({r['calls_per_step']:.0f} calls)" if r.get("calls_per_step") else ""
        print(f"  {name:50s} {r['ms_per_step']:6.1f} ms{calls}")
    save("spark_step", result)


if __name__ == "__main__":
    main()

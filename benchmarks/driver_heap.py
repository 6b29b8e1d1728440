"""What a long run keeps on the driver: the driver JVM's live heap after a full GC, and the Python driver's RSS,
at points of a long backup-worker run, beside the plain step's.

Each configuration runs in a fresh process (a new JVM): ``--steps`` steps on tiny data (``--examples`` images,
batch ``--batch-size``), measuring at ``--points``. At each point the driver JVM is asked for a full GC
(``System.gc()``, G1: a full, stop-the-world collection) and its heap in use is read from the MemoryMXBean,
with the memory that blocks hold in the block managers. ``--histogram DIR`` also writes ``jcmd
GC.class_histogram`` at each point, for finding what grows. Writes benchmarks/results/driver_heap.json.

    python benchmarks/driver_heap.py                  # 3,000 steps at 2 + 1 (real compute) beside b = 0
    python benchmarks/driver_heap.py --scale          # 1,000 steps at 96 + 4, emulated compute
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, cpu, save

sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def jvm_live_heap_mb(sc) -> float:
    """The driver JVM's heap in use right after a full GC (two, so that objects freed by the first's
    finalisation go too)."""
    jvm = sc._jvm
    for _ in range(2):
        jvm.java.lang.System.gc()
    return jvm.java.lang.management.ManagementFactory.getMemoryMXBean().getHeapMemoryUsage().getUsed() / 2**20


def block_manager_mb(sc) -> float:
    """Memory held by blocks in the block managers (broadcast pieces, task results, cached partitions), from
    Spark's public SparkContext.getExecutorMemoryStatus: (max, remaining) per block manager."""
    status = sc._jsc.sc().getExecutorMemoryStatus()
    used = 0
    iterator = status.values().iterator()
    while iterator.hasNext():
        pair = iterator.next()
        used += pair._1() - pair._2()
    return used / 2**20


def run_one(args) -> dict:
    """Child: one configuration; prints its measurements as JSON on the last line."""
    import numpy as np

    from mnist_lenet_spark import data, session
    from mnist_lenet_spark import spark as msp
    from mnist_lenet_spark.executor.emulation import EmulatedCompute
    from mnist_lenet_spark.executor.straggler import StragglerModel
    shards = args.workers + args.backup
    conf = {"spark.ui.enabled": "true"}
    spark = session.session(f"local[{shards if args.emulate else 2}]", conf=conf)
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    pid = int(sc._jvm.java.lang.ProcessHandle.current().pid())
    if args.emulate:
        images = np.zeros((args.examples, 28, 28), np.uint8)
        labels = np.arange(args.examples) % 10
    else:
        mnist = data.load_mnist()
        images, labels = mnist.train.images[:args.examples], mnist.train.labels[:args.examples]
    options = {"backup_workers": args.backup}
    if args.backup:
        options.update(backup_signal=not args.no_signal, backup_combine=args.combine)
    sgd = msp.SyncSGD(spark, args.workers, batch_size=args.batch_size, validate_every=0,
                      emulation=EmulatedCompute(shift=0.005, tail_mean=0.002) if args.emulate else None,
                      straggler=StragglerModel(args.straggler_prob, args.straggler_delay), **options)
    points = sorted(set(args.points))
    found: list[dict] = []
    t0 = time.perf_counter()

    def on_step(record):
        step = record["step"]
        if step in points:
            point = {"step": step, "jvm_live_heap_mb": jvm_live_heap_mb(sc), "block_manager_mb": block_manager_mb(sc),
                     "python_rss_mb": rss_mb(), "seconds": time.perf_counter() - t0}
            if args.histogram:
                out = Path(args.histogram) / f"{args.label}-{step}.txt"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(subprocess.run(["jcmd", str(pid), "GC.class_histogram"], capture_output=True,
                                              text=True, timeout=120).stdout)
            found.append(point)
            print(json.dumps(point), file=sys.stderr, flush=True)

    result = sgd.fit(images, labels, epochs=10**6, max_steps=args.steps, on_step=on_step)
    out = {"steps": len(result.history), "points": found,
           "step_seconds_median": float(np.median([h["seconds"] for h in result.history]))}
    spark.stop()
    return out


CONFIGS = {  # name: flags of one child run (with --scale, b = 4 instead of 1)
    "plain": ["--backup", "0"],
    "backup": ["--backup", "1"],
    "backup-no-signal": ["--backup", "1", "--no-signal"],
    "backup-executors-combine": ["--backup", "1", "--combine", "executors"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--scale", action="store_true", help="96 + 4 tasks a step, emulated compute, 1,000 steps")
    ap.add_argument("--configs", default="plain,backup,backup-executors-combine",
                    help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--histogram", default=None, help="folder for jcmd class histograms at each point")
    # one child run
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--label", default="run", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--examples", type=int, default=600)
    ap.add_argument("--emulate", action="store_true")
    ap.add_argument("--straggler-prob", type=float, default=0.05)
    ap.add_argument("--straggler-delay", type=float, default=0.3)
    ap.add_argument("--no-signal", action="store_true")
    ap.add_argument("--combine", default="driver")
    ap.add_argument("--points", type=lambda s: [int(x) for x in s.split(",")], default=None)
    args = ap.parse_args()
    steps = args.steps or (1000 if args.scale else 3000)
    points = args.points or [300, (300 + steps) // 2, steps]
    if args.child:
        args.steps, args.points = steps, points
        print(json.dumps(run_one(args)))
        return
    size = (["--workers", "96", "--emulate", "--batch-size", "1", "--examples", "4000"] if args.scale else
            ["--workers", "2", "--examples", "600"])
    names = args.configs.split(",") if args.configs else list(CONFIGS)
    results = {}
    for name in names:
        flags = CONFIGS[name]
        if args.scale and flags[1] != "0":  # 96 + 4 instead of 2 + 1
            flags = ["--backup", "4", *flags[2:]]
        cmd = [sys.executable, __file__, "--child", "--label", name,
               "--steps", str(steps), "--points", ",".join(map(str, points)), *size, *flags]
        if args.histogram:
            cmd += ["--histogram", args.histogram]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        if proc.returncode != 0:
            sys.exit(f"{name}: {proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        first, last = results[name]["points"][0], results[name]["points"][-1]
        heap = [p["jvm_live_heap_mb"] for p in results[name]["points"]]
        print(f"{name}: live heap " + " -> ".join(f"{h:.0f}" for h in heap) + f" MB at steps {points} "
              f"({heap[-1] - heap[0]:+.1f}); blocks {first['block_manager_mb']:.1f} -> "
              f"{last['block_manager_mb']:.1f} MB; "
              f"Python RSS {first['python_rss_mb']:.0f} -> {last['python_rss_mb']:.0f} MB; "
              f"step {results[name]['step_seconds_median'] * 1000:.0f} ms", flush=True)
    save("driver_heap_scale" if args.scale else "driver_heap",
         {"cpu": cpu(), "steps": steps, "scale": args.scale, "results": results})


if __name__ == "__main__":
    main()

"""The staged DataFrame path against the array path on the namespace cluster (tests/netns_cluster.py): three
one-core worker hosts that share no /tmp with each other or the driver, executors on the packed environment.

Alternating in one application, ``--rounds`` times: a fit of ``SyncSGD`` 3 x 64 on MNIST's 55,000 training rows
given as arrays (broadcast), and one on the same rows read from Parquet in the cluster's storage and staged as
shards on the executors' own disks (staged anew each round). Reported: the median step of each (target: staged /
arrays <= 1.05), how the shards were spread over the executors at each staging, and from the event log the step
tasks that ran away from their shard (``ShardMissing``, run again by Spark) and the task time they cost.
Needs root (network and mount namespaces); elsewhere it says why and does nothing. Writes
benchmarks/results/cluster.json.

    sudo .venv/bin/python benchmarks/cluster.py [--steps 30] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import PACKED_ENV, ROOT, namespace_cluster_missing, save

sys.path.insert(0, str(ROOT))
WARMUP = 5


def median_step(result) -> float:
    return statistics.median(h["seconds"] for h in result.history[WARMUP:])


def child(master: str, storage: Path, steps: int, rounds: int) -> None:
    """The driver program, on the cluster's driver host: prints one JSON line."""
    from mnist_lenet_spark import data
    from mnist_lenet_spark import spark as msp
    from mnist_lenet_spark.cluster import staging
    from tests.netns_cluster import wait_for_executors
    spark = msp.session(master, conf={"spark.archives": f"{PACKED_ENV}#environment", "spark.executor.memory": "1g",
                                      "spark.eventLog.enabled": "true", "spark.eventLog.compress": "false",
                                      "spark.eventLog.dir": str(storage / "events"), "spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    wait_for_executors(spark, 3)
    mnist = data.load_mnist()
    sgd = msp.SyncSGD(spark, 3, batch_size=64)
    arrays, staged_steps, places, staging_seconds = [], [], [], []
    try:
        rows = spark.read.parquet(str(storage / "train.parquet"))
        for _ in range(rounds):  # alternate, so both see the same machine load
            arrays.append(median_step(sgd.fit(mnist.train.images, mnist.train.labels, max_steps=steps + WARMUP)))
            staged = staging.stage(rows, "features", "label", 3, staging.staging_directory(None))
            try:
                result = sgd.fit_data(staged.source, staged.num_examples, max_steps=steps + WARMUP)
            finally:
                staging.unstage(spark.sparkContext, staged.source)
            staged_steps.append(median_step(result))
            places.append(list(staged.places))
            staging_seconds.append(staged.seconds)
        app_id = spark.sparkContext.applicationId
    finally:
        spark.stop()
    print(json.dumps({"app_id": app_id, "arrays": arrays, "staged": staged_steps, "places": places,
                      "staging_seconds": staging_seconds}))


def runaway_tasks(storage: Path, app_id: str) -> dict:
    """Step tasks that failed with ShardMissing (ran where their shard is not), and their task seconds."""
    from tests.event_log import task_ends
    ends = task_ends(storage / "events", app_id)
    missed = [end for end in ends if end.shard_missing]
    return {"tasks": len(ends), "shard_missing": len(missed),
            "shard_missing_task_seconds": sum(end.seconds for end in missed)}


def write_rows(storage: Path) -> None:
    """MNIST's 55,000 training rows as Parquet in the cluster's storage (binary features), written here."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mnist_lenet_spark import data
    train = data.load_mnist().train
    (storage / "train.parquet").mkdir()
    for part, start in enumerate(range(0, len(train.labels), 20000)):  # a few input partitions
        images, labels = train.images[start:start + 20000], train.labels[start:start + 20000]
        pq.write_table(pa.table({"label": pa.array(labels.astype("int64")),
                                 "features": pa.array([x.tobytes() for x in images], pa.binary())}),
                       storage / "train.parquet" / f"part-{part}.parquet")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("MASTER", "STORAGE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]), args.steps, args.rounds)
    reason = namespace_cluster_missing()
    if reason:
        print(f"benchmarks/cluster.py: skipped: the namespace cluster {reason}")
        return
    from tests.netns_cluster import Cluster
    (ROOT / "build").mkdir(exist_ok=True)
    storage = Path(tempfile.mkdtemp(prefix="bench-cluster-", dir=ROOT / "build"))
    (storage / "events").mkdir()
    write_rows(storage)
    cluster = Cluster(storage, workers=3, keep=str(ROOT))
    try:
        proc = cluster.driver.run([sys.executable, __file__, "--child", cluster.master_url, str(storage), "--steps",
                                   str(args.steps), "--rounds", str(args.rounds)], cwd=ROOT,
                                  env={"PYSPARK_PYTHON": "./environment/bin/python"}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = proc.communicate(timeout=1800)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        if proc.returncode != 0:
            sys.exit(f"benchmarks/cluster.py: the driver failed:\n{stderr[-4000:]}")
        run = json.loads(stdout.strip().splitlines()[-1])
        runaway = runaway_tasks(storage, run["app_id"])
    finally:
        cluster.stop()
        import shutil
        shutil.rmtree(storage, ignore_errors=True)
    a, s = statistics.median(run["arrays"]), statistics.median(run["staged"])
    result = {"hosts": "3 one-core worker hosts, driver and master on hosts of their own (network + mount namespaces)",
              "step_arrays_ms": a * 1e3, "step_staged_ms": s * 1e3, "staged_over_arrays": s / a,
              "rounds": {"arrays_ms": [x * 1e3 for x in run["arrays"]], "staged_ms": [x * 1e3 for x in run["staged"]]},
              "shards_per_executor": run["places"], "staging_seconds": run["staging_seconds"], **runaway}
    print(f"step 3 x 64 on the namespace cluster: arrays {a * 1e3:.1f} ms, staged {s * 1e3:.1f} ms = {s / a:.3f}x "
          f"(target <= 1.05); shards per executor at each staging: {run['places']}; staging "
          f"{statistics.median(run['staging_seconds']):.1f} s; tasks that ran away from their shard: "
          f"{runaway['shard_missing']} of {runaway['tasks']} ({runaway['shard_missing_task_seconds']:.1f} task-s)")
    save("cluster", result)


if __name__ == "__main__":
    main()

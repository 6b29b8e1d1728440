"""Staged step tasks that run away from their shard: how often, what a miss costs, and what the retry does.

On ``local-cluster[2,1,1024]`` (two one-core executor JVMs, each with its own local directory) three shards are
staged from a DataFrame, so one executor holds two of them and the other one: every step the executor with one
shard is free while the other is still busy, which is when Spark's delay scheduling may hand it a task whose
shard it does not hold (``ShardMissing``, run again by Spark). Each setting runs in a fresh application, a staged
fit and then an array fit of the same rows (same batches), ``--steps`` steps each:

- ``default``: Spark's ``spark.locality.wait`` (3 s) and the cluster settings ``session()`` adds;
- ``wait 0``: ``spark.locality.wait=0``, the worst case (Spark ignores locality, as when tasks outlast the wait);
- ``wait 0, no exclusion``: as ``wait 0`` with ``spark.excludeOnFailure.taskAndStage.enabled=false`` (Spark's
  own default), where a retry may run on the same wrong executor again.

Reported per setting: misses out of all tasks, misses on a retry (a miss of attempt >= 1: four in a row fail the
fit), the task seconds the misses cost, the median step staged and with arrays (after 5 warm-up steps), and
whether both fits gave the same parameters. Writes benchmarks/results/runaway.json.

    python benchmarks/runaway.py [--steps 30]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile

from common import ROOT, in_fresh_process, save

sys.path.insert(0, str(ROOT))
WARMUP = 5
ROWS = 4000
SETTINGS = {
    "default": {},
    "wait 0": {"spark.locality.wait": "0s"},
    "wait 0, no exclusion": {"spark.locality.wait": "0s", "spark.excludeOnFailure.taskAndStage.enabled": "false"},
}


def child(setting: str, steps: int) -> None:
    import numpy as np

    from mnist_lenet_spark import data
    from mnist_lenet_spark import spark as msp
    from mnist_lenet_spark.cluster import staging
    from tests.event_log import task_ends
    events = tempfile.mkdtemp(prefix="runaway-events-")
    spark = msp.session("local-cluster[2,1,1024]", conf={
        **SETTINGS[setting], "spark.ui.enabled": "false", "spark.eventLog.enabled": "true",
        "spark.eventLog.compress": "false", "spark.eventLog.dir": events})
    spark.sparkContext.setLogLevel("ERROR")
    try:
        train = data.load_mnist().train
        images, labels = train.images[:ROWS], train.labels[:ROWS]
        rows = [(int(y), bytearray(x.tobytes())) for x, y in zip(images, labels)]
        df = spark.createDataFrame(spark.sparkContext.parallelize(rows, 2), ["label", "features"])
        sgd = msp.SyncSGD(spark, 3, batch_size=64)
        staged = staging.stage(df, "features", "label", 3, staging.staging_directory(None))
        try:
            on_shards = sgd.fit_data(staged.source, staged.num_examples, max_steps=steps + WARMUP)
        finally:
            staging.unstage(spark.sparkContext, staged.source)
        on_arrays = sgd.fit(images, labels, max_steps=steps + WARMUP)
        app_id = spark.sparkContext.applicationId
    finally:
        spark.stop()
    ends = task_ends(events, app_id)
    shutil.rmtree(events, ignore_errors=True)
    missed = [end for end in ends if end.shard_missing]

    def median_step(result):
        return statistics.median(h["seconds"] for h in result.history[WARMUP:])
    print(json.dumps({
        "shards_per_executor": list(staged.places), "tasks": len(ends), "shard_missing": len(missed),
        "shard_missing_on_a_retry": sum(end.attempt >= 1 for end in missed),
        "shard_missing_task_seconds": sum(end.seconds for end in missed),
        "step_staged_ms": median_step(on_shards) * 1e3, "step_arrays_ms": median_step(on_arrays) * 1e3,
        "same_parameters": all(np.array_equal(on_shards.params[k], on_arrays.params[k]) for k in on_arrays.params)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.steps)
    results = {}
    for setting in SETTINGS:
        r = results[setting] = in_fresh_process(__file__, "--child", setting, "--steps", str(args.steps))
        print(f"{setting}: shards per executor {r['shards_per_executor']}; ran away {r['shard_missing']} of "
              f"{r['tasks']} tasks ({r['shard_missing_on_a_retry']} on a retry, {r['shard_missing_task_seconds']:.2f} "
              f"task-s); median step staged {r['step_staged_ms']:.0f} ms, arrays {r['step_arrays_ms']:.0f} ms "
              f"({r['step_staged_ms'] / r['step_arrays_ms']:.2f}x); same parameters: {r['same_parameters']}")
    save("runaway", {"setup": "local-cluster[2,1,1024], 3 shards of a 4,000-row DataFrame, SyncSGD 3 x 64",
                     "steps": args.steps, "settings": results})


if __name__ == "__main__":
    main()

"""Examples per second of the asynchronous mode against synchronous SGD without backup workers (b = 0), without
stragglers, on local[2] (a short run of each; the Spark session, data broadcast and warm-up are not timed).

Synchronous: the mean rate over the steps (examples / step seconds). Asynchronous: examples applied / seconds from
the job's start to the budget spent (its tasks' start-up included). At N = 4 on local[2] only two of the four long
tasks hold a slot: the other two wait for one until the budget is spent (the mode needs N slots), so N = 2 is
measured too. Writes benchmarks/results/async_rate.json with the CPU.

    python benchmarks/async_rate.py [--workers 4] [--batch-size 32] [--steps 30]
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
from common import save

from mnist_lenet_spark import data, spark as msp
from mnist_lenet_spark.async_sgd import AsyncSGD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="synchronous steps; async runs workers x as many updates")
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    session = msp.session(args.master, conf={"spark.ui.enabled": "false"})
    session.sparkContext.setLogLevel("ERROR")
    train = data.load_mnist().train
    images, labels = train.images[:8192], train.labels[:8192]
    out = {"master": args.master, "batch_size": args.batch_size, "sync_steps": args.steps}
    for workers in sorted({args.workers, 2}, reverse=True):
        sync = msp.SyncSGD(session, workers, batch_size=args.batch_size).fit(images, labels, max_steps=args.steps)
        steps = sync.history[2:]  # the first steps fill the workers' heaps
        sync_rate = sum(h["examples"] for h in steps) / sum(h["step_seconds"] for h in steps)
        result = AsyncSGD(session, workers, batch_size=args.batch_size).fit(images, labels,
                                                                            max_steps=args.steps * workers)
        staleness = result.staleness
        out[f"N={workers}"] = {
            "sync_examples_per_second": sync_rate, "async_examples_per_second": result.examples_per_second,
            "async_over_sync": result.examples_per_second / sync_rate,
            "async_updates": len(result.history), "async_run_seconds": result.run_seconds,
            "async_staleness_mean": float(np.mean(staleness)), "async_staleness_max": int(max(staleness)),
            "async_shards_that_pushed": sorted({h["shard"] for h in result.history}),
            "async_apply_seconds_mean": float(np.mean([h["seconds"] for h in result.history])),
        }
        print(f"N={workers}: sync {sync_rate:.0f} examples/s, async {result.examples_per_second:.0f} examples/s "
              f"({out[f'N={workers}']['async_over_sync']:.2f}x), staleness mean {np.mean(staleness):.2f}, "
              f"shards that pushed {out[f'N={workers}']['async_shards_that_pushed']}")
    session.stop()
    print(save("async_rate", out))


if __name__ == "__main__":
    main()

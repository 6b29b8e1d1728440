"""Examples/s against per-worker batch size: single process vs Spark with 1 and 2 workers on local[2].

For each per-worker batch B (32 ... 1024): the single-process trainer (one BLAS thread, batch B
per step), and SyncSGD with 1 and 2 workers of batch B each. Configurations alternate within
each round; medians over rounds. Writes benchmarks/results/scaling.json and scaling.png (docs/benchmarks.md,
"Scaling", quotes them).

    python benchmarks/scaling.py [--steps 8] [--rounds 2]
    python benchmarks/scaling.py --model resnet --batches 64,256   # ResNet-8, beside LeNet's table:
        writes the "resnet" key of scaling.json (no plot)
"""
from __future__ import annotations

import argparse
import statistics

from common import RESULTS, ROOT, save

from mnist_lenet_spark import data, models
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.config import SGDConfig
from mnist_lenet_spark.executor import tasks
from mnist_lenet_spark import plots
from mnist_lenet_spark import local

BATCHES = [32, 64, 128, 256, 512, 1024]


def local_rate(mnist, batch, steps, model):
    config = SGDConfig(batch_size=batch, max_steps=steps + 2)
    result = local.fit_local(mnist.train.images, mnist.train.labels, config, model=model)
    return statistics.median(h["examples"] / h["seconds"] for h in result.history[2:])


def spark_rate(spark, mnist, workers, batch, steps, model):
    result = msp.SyncSGD(spark, workers=workers, batch_size=batch, model=model).fit(
        mnist.train.images, mnist.train.labels, max_steps=steps + 2)
    return statistics.median(h["examples"] / h["seconds"] for h in result.history[2:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="lenet", choices=["lenet", "resnet"])
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)), help="per-worker batch sizes")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    model = models.network_from(args.model)
    tasks.tune_process(1)
    mnist = data.load_mnist()
    spark = msp.session("local[2]", conf_file=ROOT / "conf" / "spark-defaults.conf")
    spark.sparkContext.setLogLevel("ERROR")
    rates = {name: {b: [] for b in batches} for name in ("single process", "spark 1 worker", "spark 2 workers")}
    for _ in range(args.rounds):
        for b in batches:
            rates["single process"][b].append(local_rate(mnist, b, args.steps, model))
            rates["spark 1 worker"][b].append(spark_rate(spark, mnist, 1, b, args.steps, model))
            rates["spark 2 workers"][b].append(spark_rate(spark, mnist, 2, b, args.steps, model))
    spark.stop()
    med = {name: [statistics.median(v[b]) for b in batches] for name, v in rates.items()}
    speedup = {name: [r / s for r, s in zip(med[name], med["single process"])]
               for name in ("spark 1 worker", "spark 2 workers")}
    print(f"{'batch/worker':>12} {'single':>9} {'spark x1':>9} {'spark x2':>9} {'x2/single':>10}")
    for i, b in enumerate(batches):
        print(f"{b:12d} {med['single process'][i]:9.0f} {med['spark 1 worker'][i]:9.0f} "
              f"{med['spark 2 workers'][i]:9.0f} {speedup['spark 2 workers'][i]:9.2f}x")
    if args.model == "resnet":
        save("scaling", {"resnet": {"batches": batches, "examples_per_second": med,
                                    "speedup_over_single_process": speedup, "steps": args.steps,
                                    "rounds": args.rounds}})
        return
    save("scaling", {"batches": batches, "examples_per_second": med, "speedup_over_single_process": speedup})
    plots.scaling(batches, med, speedup, RESULTS / "scaling.png", "LeNet on local[2] (2 cores): examples/s")
    print(f"wrote {RESULTS / 'scaling.json'} and {RESULTS / 'scaling.png'}")


if __name__ == "__main__":
    main()

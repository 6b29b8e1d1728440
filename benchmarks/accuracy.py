"""Accuracy and time to train: the single-process trainer (1 epoch) and Spark (3 epochs, 2 x 64).

Optionally (--lr-study) one epoch for 2, 4 and 8 workers x 64, with the plain SystemML learning
rate and with linear scaling + warm-up (Goyal et al. 2017), to compare the two. Writes
benchmarks/results/accuracy.json (docs/benchmarks.md, "Accuracy", quotes it).

    python benchmarks/accuracy.py [--epochs 3] [--lr-study]
    python benchmarks/accuracy.py --model resnet [--lr 0.4] [--seeds 0,1,2]   # ResNet-8, Spark 2 x 64 only
    python benchmarks/accuracy.py --model resnet --lr-study   # peak rates --study-lrs (one process, 2 shards)
        (ResNet-8: 3 epochs with 2 workers, a cosine schedule after 100 warm-up steps)
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

from common import ROOT, save

from mnist_lenet_spark import data, models
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.config import SGDConfig
from mnist_lenet_spark.executor import inference, tasks
from mnist_lenet_spark import local

LR = 0.4  # ResNet's peak rate, the one benchmarks/results/accuracy.json's ResNet runs used


def test_accuracy(params, mnist, model):
    return inference.count_correct(model, params, mnist.test.images, mnist.test.labels) / len(mnist.test.labels)


def resnet(epochs: int, lr: float, schedule: str, lr_decay: float, warmup_steps: int, seeds: list[int]) -> dict:
    """ResNet-8 on Spark local[2], 2 workers x 64, ``epochs`` epochs from ``lr`` for each seed (the weights' init
    and the shuffles). Batch norm allows a far larger rate than LeNet's 0.01 (He et al.'s and PyTorch's reference
    ResNets train at 0.1, here the effective batch is 128); the cosine schedule (per step, to 0) lets the last
    steps settle, so that the running statistics inference uses (an average over the last ~10 steps) describe
    the final weights. Validated by epoch on the 5,000 held-out training images (how the schedule was chosen);
    the test set is scored once, at the end."""
    mnist = data.load_mnist()
    spark = msp.session("local[2]", conf_file=ROOT / "conf" / "spark-defaults.conf")
    spark.sparkContext.setLogLevel("ERROR")
    model = models.network_from("resnet")
    runs = []
    try:
        for seed in seeds:
            t0 = time.perf_counter()
            result = msp.SyncSGD(spark, workers=2, batch_size=64, model=model, lr=lr, lr_schedule=schedule,
                                 lr_decay=lr_decay, warmup_steps=warmup_steps, seed=seed).fit(
                mnist.train.images, mnist.train.labels, epochs=epochs,
                validation_data=(mnist.validation.images, mnist.validation.labels))
            seconds = time.perf_counter() - t0
            acc = test_accuracy(result.params, mnist, model)
            runs.append({"seed": seed, "test_accuracy": acc, "seconds_per_epoch": seconds / epochs,
                         "validation_accuracy_by_epoch": [v["accuracy"] for v in result.validation]})
            print(f"ResNet-8, spark local[2], 2 workers x 64, {epochs} epochs, lr {lr} {schedule}, seed {seed}: "
                  f"validation by epoch {runs[-1]['validation_accuracy_by_epoch']}, test accuracy {acc:.4f}, "
                  f"{seconds / epochs:.0f} s per epoch", flush=True)
    finally:
        spark.stop()
    worst = min(r["test_accuracy"] for r in runs)
    print(f"ResNet-8 test accuracy over seeds {seeds}: lowest {worst:.4f}, median "
          f"{statistics.median(r['test_accuracy'] for r in runs):.4f}")
    return {"epochs": epochs, "lr": lr, "lr_schedule": schedule, "lr_decay": lr_decay, "warmup_steps": warmup_steps,
            "runs": runs, "lowest_test_accuracy": worst,
            "median_seconds_per_epoch": statistics.median(r["seconds_per_epoch"] for r in runs)}


def _one_process_run(job: tuple[float, int, int, int]) -> dict:
    lr, seed, epochs, warmup_steps = job
    tasks.tune_process(1)
    mnist, model = data.load_mnist(), models.network_from("resnet")
    config = SGDConfig(lr=lr, lr_schedule="cosine", warmup_steps=warmup_steps, epochs=epochs, seed=seed)
    result = local.fit_local(mnist.train.images, mnist.train.labels, config, model=model, shards=2,
                             validation=(mnist.validation.images, mnist.validation.labels))
    out = {"lr": lr, "seed": seed, "validation_accuracy_by_epoch": [v["accuracy"] for v in result.validation],
           "test_accuracy": test_accuracy(result.params, mnist, model)}
    print(f"one process, 2 shards x 64 (= 2 workers), lr {lr} cosine, seed {seed}: validation by epoch "
          f"{out['validation_accuracy_by_epoch']}, test {out['test_accuracy']:.4f}", flush=True)
    return out


def resnet_lr_study(lrs: list[float], seeds: list[int], epochs: int, warmup_steps: int) -> dict:
    """How the peak rate was chosen: each (lr, seed) trained in one process with 2 shards per step (the same
    examples and update as SyncSGD with 2 workers), two runs at a time (one per core); the rate with the best
    mean final validation accuracy wins. Test accuracy is reported beside it, not used."""
    jobs = [(lr, seed, epochs, warmup_steps) for lr in lrs for seed in seeds]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        runs = pool.map(_one_process_run, jobs)
    by_lr = {}
    for lr in lrs:
        mine = [r for r in runs if r["lr"] == lr]
        by_lr[str(lr)] = {"runs": mine,
                          "mean_validation": statistics.mean(r["validation_accuracy_by_epoch"][-1] for r in mine),
                          "mean_test": statistics.mean(r["test_accuracy"] for r in mine)}
    best = max(by_lr, key=lambda k: by_lr[k]["mean_validation"])
    for lr, row in by_lr.items():
        print(f"lr {lr}: mean validation {row['mean_validation']:.4f}, mean test {row['mean_test']:.4f}"
              f"{'  <- chosen' if lr == best else ''}")
    return {"epochs": epochs, "warmup_steps": warmup_steps, "by_lr": by_lr, "chosen_lr": float(best)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--skip-single", action="store_true")
    ap.add_argument("--lr-study", action="store_true", help="LeNet: 2, 4, 8 workers; ResNet: --study-lrs")
    ap.add_argument("--model", default="lenet", choices=["lenet", "resnet"])
    ap.add_argument("--lr", type=float, default=LR, help="ResNet's peak learning rate (--model resnet)")
    ap.add_argument("--lr-schedule", default="cosine", choices=["cosine", "exponential"], help="(--model resnet)")
    ap.add_argument("--lr-decay", type=float, default=0.25, help="per epoch, --lr-schedule exponential only")
    ap.add_argument("--warmup-steps", type=int, default=100, help="(--model resnet)")
    ap.add_argument("--seeds", default="0,1,2", help="ResNet runs, one per seed (--model resnet)")
    ap.add_argument("--study-lrs", default="0.2,0.3,0.4", help="--model resnet --lr-study: the rates tried, "
                    "seeds 0 and 1 each, in one process")
    args = ap.parse_args()
    tasks.tune_process(1)
    if args.model == "resnet":
        if args.lr_study:
            lrs = [float(x) for x in args.study_lrs.split(",")]
            save("accuracy", {"resnet_lr_study": resnet_lr_study(lrs, [0, 1], args.epochs, args.warmup_steps)})
            return
        seeds = [int(x) for x in args.seeds.split(",")]
        save("accuracy", {"resnet_spark_2x64": resnet(args.epochs, args.lr, args.lr_schedule, args.lr_decay,
                                                      args.warmup_steps, seeds)})
        return
    mnist = data.load_mnist()
    out = {}
    if not args.skip_single:
        t0 = time.perf_counter()
        result = local.fit_local(mnist.train.images, mnist.train.labels)
        seconds = time.perf_counter() - t0
        out["single_process_1_epoch"] = {"test_accuracy": test_accuracy(result.params, mnist), "seconds": seconds}
        print(f"single process, 1 epoch, batch 64: test accuracy {out['single_process_1_epoch']['test_accuracy']:.4f}"
              f" in {seconds:.0f} s", flush=True)
    spark = msp.session("local[2]", conf_file=ROOT / "conf" / "spark-defaults.conf")
    spark.sparkContext.setLogLevel("ERROR")
    for name, kwargs in [("spark_2x64", {}), ("spark_2x64_linear_lr", {"lr_scaling": "linear", "warmup_steps": 100})]:
        t0 = time.perf_counter()
        result = msp.SyncSGD(spark, workers=2, batch_size=64, **kwargs).fit(
            mnist.train.images, mnist.train.labels, epochs=args.epochs)
        seconds = time.perf_counter() - t0
        acc = test_accuracy(result.params, mnist, models.network_from("lenet"))
        out[name] = {"epochs": args.epochs, "test_accuracy": acc, "seconds": seconds,
                     "seconds_per_epoch": seconds / args.epochs, **kwargs}
        print(f"spark local[2], 2 workers x 64, {args.epochs} epochs, {kwargs or 'SystemML lr'}: "
              f"test accuracy {acc:.4f}, {seconds / args.epochs:.1f} s per epoch", flush=True)
    if args.lr_study:
        study = {}
        for workers in (2, 4, 8):
            for name, kwargs in [("plain lr 0.01", {}),
                                 ("linear scaling + warm-up", {"lr_scaling": "linear", "warmup_steps": 100})]:
                r = msp.SyncSGD(spark, workers=workers, batch_size=64, **kwargs).fit(
                    mnist.train.images, mnist.train.labels, epochs=1)
                acc = test_accuracy(r.params, mnist, models.network_from("lenet"))
                study[f"{workers} workers, {name}"] = acc
                print(f"{workers} workers x 64, 1 epoch, {name}: test accuracy {acc:.4f}", flush=True)
        out["lr_study_1_epoch"] = study
    spark.stop()
    save("accuracy", out)


if __name__ == "__main__":
    main()

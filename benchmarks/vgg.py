"""A third network, defined in a few lines: a small VGG-style net on 3 x 32 x 32 images.

1. Its one-thread training step at batch 64 (forward, backward, Nesterov update) against the same network in
   PyTorch CPU, interleaved rounds in one process (as benchmarks/kernel.py): ours / PyTorch speed, median of the
   rounds's ratios. Target: at least 0.8x.
2. It trains through the estimator (``NetworkClassifier``, Spark local[2], 2 workers) on synthetic 3 x 32 x 32
   images of 10 classes (class c: a bright square in a colour and quadrant of its own, over noise) from a
   DataFrame, and the fitted model scores held-out images.

    python benchmarks/vgg.py [--rounds 7] [--steps 10] [--skip-fit]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from common import cpu, median_seconds, save
from kernel import BATCH, model_step_fn, torch_sgd_step

from mnist_lenet_spark.executor import tasks
from mnist_lenet_spark.nn.network import Network


def conv(filters):
    return {"type": "conv2d", "filters": filters, "kernel": 3, "padding": "same"}


def stage(filters):  # two 3x3 convolutions, each with a ReLU, then a 2x2 max-pool: VGG's building block
    return [conv(filters), {"type": "relu"}, conv(filters), {"type": "relu"}, {"type": "max_pool", "size": 2}]


#: stages of 32, 64 and 128 channels (32x32 -> 4x4) -> dense 256 -> ReLU -> dropout 0.5 -> dense 10
VGG = {"input_shape": [3, 32, 32], "layers": [
    *stage(32), *stage(64), *stage(128), {"type": "flatten"},
    {"type": "dense", "units": 256}, {"type": "relu"}, {"type": "dropout", "rate": 0.5}, {"type": "dense", "units": 10}]}


def torch_step_fn(X, y):
    import torch
    from torch import nn

    def stage(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(2)]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        *stage(3, 32), *stage(32, 64), *stage(64, 128),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10))
    return torch_sgd_step(model, X, y)


def kernel_row(rounds: int, steps: int) -> dict:
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (BATCH, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    ours, theirs = model_step_fn(Network(VGG), X, y), torch_step_fn(X, y)
    ours_times, torch_times, ratios = [], [], []
    for _ in range(rounds):  # interleaved: both see the same machine load
        ours_times.append(median_seconds(ours, steps))
        torch_times.append(median_seconds(theirs, steps))
        ratios.append(torch_times[-1] / ours_times[-1])
    result = {"numpy_step_ms": statistics.median(ours_times) * 1e3,
              "torch_step_ms": statistics.median(torch_times) * 1e3,
              "ratio_numpy_over_torch": statistics.median(ratios)}
    print(f"vgg numpy  : {result['numpy_step_ms']:6.1f} ms/step; pytorch: {result['torch_step_ms']:6.1f} ms/step; "
          f"numpy speed / pytorch speed (median of {rounds} rounds): {result['ratio_numpy_over_torch']:.2f}x "
          f"(target >= 0.8)")
    return result


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 32, 32) uint8 images of 10 classes: class c is a bright 10 x 10 square in channel c % 3, in
    quadrant c % 4 (at a random place inside it), over noise; (n,) labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 90, (n, 3, 32, 32)).astype(np.uint8)
    for image, label, (dr, dc) in zip(images, labels, rng.integers(0, 7, (n, 2))):
        r, c = 16 * ((label % 4) // 2) + dr, 16 * (label % 2) + dc
        image[label % 3, r:r + 10, c:c + 10] = 230
        if label >= 6:  # classes 6..9 repeat 2..5's colour and quadrant: a second square tells them apart
            image[(label + 1) % 3, 32 - r - 10:32 - r, 32 - c - 10:32 - c] = 230
    return images, labels


def fit_through_the_estimator(epochs: int) -> dict:
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.linalg import Vectors

    from mnist_lenet_spark import session
    from mnist_lenet_spark.ml import NetworkClassifier
    spark = session.session("local[2]")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        images, labels = synthetic_images(2400, seed=1)
        test_images, test_labels = synthetic_images(600, seed=2)
        frame = lambda xs, ys: spark.createDataFrame(  # noqa: E731  every 10th row validates
            [(int(y), Vectors.dense(x.reshape(-1).astype(float)), i % 10 == 0) for i, (x, y) in enumerate(zip(xs, ys))],
            ["label", "features", "is_val"])
        t0 = time.perf_counter()
        model = NetworkClassifier(model=json.dumps(VGG), workers=2, batchSize=32, epochs=epochs, lr=0.005,
                                  validationIndicatorCol="is_val", seed=0).fit(frame(images, labels))
        seconds = time.perf_counter() - t0
        accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(
            model.transform(frame(test_images, test_labels)))
    finally:
        spark.stop()
    print(f"vgg through NetworkClassifier, local[2], 2 workers x 32, {epochs} epochs on 2,400 synthetic images: "
          f"held-out accuracy {accuracy:.4f} ({seconds:.0f} s)")
    print(model.networkSummary())
    return {"epochs": epochs, "train_images": 2400, "test_images": 600, "test_accuracy": accuracy,
            "fit_seconds": seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and framework")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--skip-fit", action="store_true", help="only the kernel row")
    args = ap.parse_args()
    tasks.tune_process(1)
    result = {"cpu": cpu(), "definition": VGG, "kernel": kernel_row(args.rounds, args.steps)}
    if not args.skip_fit:
        result["estimator"] = fit_through_the_estimator(args.epochs)
    save("vgg", result)


if __name__ == "__main__":
    main()

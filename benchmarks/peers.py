"""This project side by side with pyspark.ml.torch.TorchDistributor (PyTorch DDP), same math, one run.

TorchDistributor runs in local mode (torchrun on the driver, gloo, one thread per process);
its train function is the same LeNet with the same initial weights, the same shards and
mini-batches (``sharding.epoch_batches``), the same dropout masks (``TaskKey.dropout_rng``), the
same straggler draws (``StragglerModel.delay_for``), mean cross-entropy + L2 on the weights and
Nesterov momentum (PyTorch's form equals SystemML's at a constant lr). Before timing anything
the two are run for a few steps and their parameters compared. Then, per configuration: mean step
over steps 2-41 (the first excluded) and, for 2 x 512, the start-up: seconds from calling
``fit`` / ``run`` to the end of the first step, ours in a fresh SparkSession (its own start is
reported apart). Writes benchmarks/results/peers.json.

    python benchmarks/peers.py [--steps 40]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from common import cpu, save

from mnist_lenet_spark import data
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.config import SGDConfig
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.loop import sharding
from mnist_lenet_spark import models

SEED = 0
LENET = models.network_from("lenet")
KEEP_PROB = 0.5  # LeNet's dropout keeps half (models/definitions.py: rate 0.5)


def torch_train(params0: dict, images: np.ndarray, labels: np.ndarray, batch: int, steps: int,
                straggler: StragglerModel | None) -> dict:
    """One torchrun process (rank r = shard r): ``steps`` synchronous DDP steps; returns its clock after every
    step and the final parameters in this project's layout. Every rank writes its output and the last one
    wins (TorchDistributor's local mode), so every rank returns it; DDP keeps their parameters equal."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 32, 5, padding=2), nn.Conv2d(32, 64, 5, padding=2)
            self.fc3, self.fc4 = nn.Linear(3136, 512), nn.Linear(512, 10)

        def forward(self, x, keep):  # x (n, 1, 28, 28), keep (n, 512): dropout mask already scaled by 1/0.5
            x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)  # (n, 32, 14, 14)
            x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)  # (n, 64, 7, 7)
            x = torch.relu(self.fc3(x.flatten(1)))  # (n, 3136) in (C, H, W) order, as ours -> (n, 512)
            return self.fc4(x * keep)  # (n, 10)

    model = LeNet()
    # (layer, our weight, our bias, transposed?): our affine weights are (in, out); nn.Linear's are (out, in)
    layers = ((model.conv1, "conv1.W", "conv1.b", False), (model.conv2, "conv2.W", "conv2.b", False),
              (model.fc3, "fc1.W", "fc1.b", True), (model.fc4, "fc2.W", "fc2.b", True))
    with torch.no_grad():
        for layer, w, b, transpose in layers:
            layer.weight.copy_(torch.from_numpy(params0[w].T.copy() if transpose else params0[w]))
            layer.bias.copy_(torch.from_numpy(params0[b]))
    ddp = DistributedDataParallel(model)
    config = SGDConfig(batch_size=batch, seed=SEED)
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": config.l2}, {"params": biases, "weight_decay": 0.0}],
                          lr=config.lr, momentum=config.momentum, nesterov=True)
    loss_fn = nn.CrossEntropyLoss()
    batches = sharding.epoch_batches(len(labels), world, batch, SEED, 0)
    clock = [time.time()]
    for step in range(steps):
        work = batches[step][rank]
        if straggler is not None:
            straggler.sleep(work.key)
        x = torch.from_numpy(data.scale_batch(images[work.index]))
        keep = work.key.dropout_rng().random((len(work.index), 512), dtype=np.float32) < KEEP_PROB
        keep = torch.from_numpy(keep.astype(np.float32) / np.float32(KEEP_PROB))
        opt.zero_grad(set_to_none=True)
        loss_fn(ddp(x, keep), torch.from_numpy(labels[work.index])).backward()  # DDP averages the ranks' means
        opt.step()
        clock.append(time.time())
    dist.destroy_process_group()
    final = {}
    for layer, w, b, transpose in layers:
        weight = layer.weight.detach().numpy()
        final[w], final[b] = (weight.T.copy() if transpose else weight.copy()), layer.bias.detach().numpy().copy()
    return {"clock": clock, "params": final}


def run_torch(workers: int, images, labels, batch: int, steps: int, straggler=None) -> dict:
    from pyspark.ml.torch.distributor import TorchDistributor
    called = time.time()
    out = TorchDistributor(num_processes=workers, local_mode=True, use_gpu=False).run(
        torch_train, LENET.init_params(SEED), images, labels, batch, steps, straggler)
    clock = out["clock"]
    return {"startup": clock[1] - called, "steps": list(np.diff(clock)), "params": out["params"]}


def run_ours(spark, workers: int, images, labels, batch: int, steps: int, straggler=None, backup: int = 0) -> dict:
    clock = []
    called = time.time()
    result = msp.SyncSGD(spark, workers, batch_size=batch, seed=SEED, straggler=straggler,
                         backup_workers=backup).fit(images, labels, max_steps=steps,
                                                    on_step=lambda record: clock.append(time.time()))
    return {"startup": clock[0] - called, "steps": [h["seconds"] for h in result.history], "params": result.params}


def compare_params(ours: dict, theirs: dict) -> float:
    """The largest difference of any parameter, relative to that tensor's largest magnitude."""
    return max(float(np.max(np.abs(ours[k] - theirs[k])) / np.max(np.abs(ours[k]))) for k in ours)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    mnist = data.load_mnist()
    images, labels = mnist.train.images, mnist.train.labels
    steps = args.steps + 1  # the first is excluded from the mean
    stragglers = StragglerModel(prob=0.1, delay=2.0)
    rows, result = [], {"cpu": cpu(), "steps": args.steps}

    def row(name, ours, theirs):
        mean_ours, mean_theirs = statistics.mean(ours["steps"][1:]), statistics.mean(theirs["steps"][1:])
        rows.append((name, mean_theirs, mean_ours))
        result[name] = {"torch_mean_step_seconds": mean_theirs, "ours_mean_step_seconds": mean_ours,
                        "ours_over_torch": mean_ours / mean_theirs,
                        "torch_first_step_seconds": theirs["steps"][0], "ours_first_step_seconds": ours["steps"][0]}

    t0 = time.perf_counter()
    spark = msp.session("local[2]")
    spark.sparkContext.parallelize([0], 1).count()
    result["ours_session_start_seconds"] = time.perf_counter() - t0
    try:
        ours = run_ours(spark, 2, images, labels, 512, steps)  # the first fit of a fresh session: start-up
        theirs = run_torch(2, images, labels, 512, steps)
        row("2 workers x 512", ours, theirs)
        rows.append(("first step (start-up), 2 x 512", theirs["startup"], ours["startup"]))
        result["startup_2x512"] = {"torch_seconds": theirs["startup"], "ours_seconds": ours["startup"]}

        check = 3  # the same math: a few steps from the same start land on the same parameters
        difference = compare_params(run_ours(spark, 2, images, labels, 64, check)["params"],
                                    run_torch(2, images, labels, 64, check)["params"])
        result["params_relative_difference_after_3_steps"] = difference
        print(f"same math: after {check} steps at 2 x 64 the parameters differ by at most "
              f"{difference:.1e} (relative to each tensor's largest value)")
        if difference > 1e-3:
            raise SystemExit(f"peers.py: the two trainers do not compute the same steps (difference {difference:.1e})")
        row("2 workers x 64 (SystemML's)", run_ours(spark, 2, images, labels, 64, steps),
            run_torch(2, images, labels, 64, steps))
    finally:
        spark.stop()
    spark = msp.session("local[4]")
    try:
        row("4 workers x 64", run_ours(spark, 4, images, labels, 64, steps), run_torch(4, images, labels, 64, steps))
    finally:
        spark.stop()
    spark = msp.session("local[5]")
    try:
        row("4 x 64, stragglers p=0.1 x 2 s (ours b=1 on one extra slot)",
            run_ours(spark, 4, images, labels, 64, steps, stragglers, backup=1),
            run_torch(4, images, labels, 64, steps, stragglers))
    finally:
        spark.stop()

    print(f"CPU: {result['cpu']}; mean step over steps 2-{steps} (start-up: call to end of step 1)")
    print("| configuration | TorchDistributor | this project | ratio |\n|---|---|---|---|")
    for name, theirs, ours in rows:
        print(f"| {name} | {theirs:.3f} s | {ours:.3f} s | {ours / theirs:.2f}x |")
    save("peers", result)


if __name__ == "__main__":
    main()

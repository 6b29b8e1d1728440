"""NumPy LeNet step (forward, backward, Nesterov update) vs the same LeNet in PyTorch CPU.

Batch 64, one BLAS / intra-op thread each, interleaved rounds in one process so both see the
same machine load; prints images/s of both, their ratio (median of per-round ratios), and the
peak memory of one NumPy step.

    python benchmarks/kernel.py [--rounds 7] [--steps 10]
"""
from __future__ import annotations

import argparse
import statistics
import tracemalloc

import numpy as np
from common import median_seconds, save

from mnist_lenet_spark import tasks
from mnist_lenet_spark.models import base, lenet
from mnist_lenet_spark.nn.optim import sgd_nesterov

BATCH = 64


def numpy_step_fn(X, y):
    params = lenet.init_params(0)
    spec = base.param_spec(params)
    flat = base.flatten(params, spec)
    state = [flat, sgd_nesterov.init(flat)]
    rng = np.random.default_rng(0)

    def step():
        _, grads = lenet.loss_and_grads(base.unflatten(state[0], spec), X, y, train=True, rng=rng)
        state[0], state[1] = sgd_nesterov.update(state[0], base.flatten(grads, spec), state[1], lr=0.01,
                                                 momentum=0.9)
    return step


def torch_step_fn(X, y):
    import torch
    from torch import nn
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(X), torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(tx), ty).backward()
        opt.step()
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and framework")
    args = ap.parse_args()
    tasks.tune_process(1)
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (BATCH, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    np_step = numpy_step_fn(X, y)
    try:
        th_step = torch_step_fn(X, y)
    except ImportError:
        th_step = None
        print("torch not installed (pip install -e '.[bench]'): NumPy figures only")
    np_times, th_times, ratios = [], [], []
    for _ in range(args.rounds):
        t_np = median_seconds(np_step, args.steps)
        np_times.append(t_np)
        if th_step:
            t_th = median_seconds(th_step, args.steps)
            th_times.append(t_th)
            ratios.append(t_th / t_np)
    tracemalloc.start()
    np_step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    t_np = statistics.median(np_times)
    result = {"batch": BATCH, "numpy_step_ms": t_np * 1e3, "numpy_images_per_s": BATCH / t_np,
              "numpy_peak_step_mb": peak / 2**20}
    print(f"numpy  : {t_np * 1e3:6.1f} ms/step  {BATCH / t_np:7.0f} images/s  peak memory of one step "
          f"{peak / 2**20:.0f} MiB")
    if th_step:
        t_th = statistics.median(th_times)
        result.update(torch_step_ms=t_th * 1e3, torch_images_per_s=BATCH / t_th,
                      ratio_numpy_over_torch=statistics.median(ratios))
        print(f"pytorch: {t_th * 1e3:6.1f} ms/step  {BATCH / t_th:7.0f} images/s")
        print(f"numpy speed / pytorch speed (median of {args.rounds} rounds): {statistics.median(ratios):.2f}x")
    save("kernel", result)


if __name__ == "__main__":
    main()

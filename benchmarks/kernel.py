"""NumPy LeNet step (forward, backward, Nesterov update) vs the same LeNet in PyTorch CPU.

Batch 64, one BLAS / intra-op thread each, interleaved rounds in one process so both see the
same machine load; prints images/s of both, their ratio (median of per-round ratios), and the
peak memory of one NumPy step. Then the ceiling: the matrix-product FLOPs of one NumPy step
(counted from LeNet's shapes, as this package multiplies them), the single-thread SGEMM speed
of this core at conv2's shape, and so the time of the products alone: the fastest a step could
be if everything else were free, and the best ratio to PyTorch that would give.

The ResNet row: the same for the ResNet-8 preset (models/definitions.py) against the same network built from
PyTorch's reference layers (Conv2d without bias, BatchNorm2d, Linear); its ceiling is the products of one
NumPy step timed one by one at their own shapes (its convolutions have 16 to 64 output channels, where SGEMM
runs far below conv2's speed).

    python benchmarks/kernel.py [--rounds 7] [--steps 10] [--model lenet,resnet]
"""
from __future__ import annotations

import argparse
import statistics
import tracemalloc

import numpy as np
from common import cpu, median_seconds, save

from mnist_lenet_spark import models
from mnist_lenet_spark.executor import tasks
from mnist_lenet_spark.loop import update
from mnist_lenet_spark.models import base
from mnist_lenet_spark.nn import conv2d
from mnist_lenet_spark.nn.optim import sgd_nesterov

BATCH = 64
RESNET8_BLOCKS = ((16, 16, 1), (16, 32, 2), (32, 64, 2))  # (in channels, out channels, stride): models/definitions.py


def gemm_flops(batch: int = BATCH) -> float:
    """FLOPs of the matrix products in one NumPy LeNet step (forward + backward), from the shapes."""
    conv1 = 2 * (28 * 28 * batch) * 25 * 32 * 2  # forward + filter gradient; no dx for the first layer
    # conv2 in row mode: 5 kernel rows x 14 output rows = 70 (M=14*batch, K=5*32, F=64) products, of which
    # the 6 that fall in the zero padding are skipped; times 3 (forward, filter gradient, dx)
    conv2 = 2 * (14 * batch) * (5 * 32) * 64 * (70 - 6) * 3
    affine = 2 * batch * (3136 * 512 + 512 * 10) * 3  # forward, weight gradient, dx
    return float(conv1 + conv2 + affine)


def sgemm_gflops(repeats: int = 30) -> float:
    """Single-thread SGEMM speed at conv2's shape, (14*14*64, 160) @ (160, 64), GFLOP/s (median)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((14 * 14 * BATCH, 160)).astype(np.float32)  # (M, K)
    b = rng.standard_normal((160, 64)).astype(np.float32)  # (K, F)
    out = np.empty((a.shape[0], 64), np.float32)  # (M, F)
    seconds = median_seconds(lambda: np.matmul(a, b, out=out), repeats, warmup=3)
    return 2 * a.shape[0] * 160 * 64 / seconds / 1e9


def torch_sgd_step(model, X, y):
    """One PyTorch training step of ``model`` on (X, y): SGD with Nesterov momentum 0.9, lr 0.01, L2 5e-4."""
    import torch
    from torch import nn
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(X), torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(tx), ty).backward()
        opt.step()
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
    return torch_sgd_step(model, X, y)


def resnet_products(input_shape=(1, 28, 28), batch: int = BATCH) -> list[tuple[int, int, int]]:
    """The matrix products of one NumPy ResNet step, (M, K, F) for an (M, K) @ (K, F) product, as this package
    multiplies them (``nn/conv2d.py``). A 3x3 convolution (padding 1) of an (H, W, C) input to (H', W', F) with
    the kernel rows folded (3 C < MIN_ROW_COLUMNS) is (M = batch H' W', 9 C) @ (9 C, F) forward and
    (9 C, M) @ (M, F) for the filter gradient; in row mode (at any stride) it is three products
    (M_g, 3 C) @ (3 C, F), one per kernel row, whose M_g skip the output rows that row reads from the padding. Its
    dx at stride 1 is the convolution of dout with the turned filters (F channels in, C out), at stride 2 the
    products (M_g, F) @ (F, 3 C) before col2im; the stem has no dx. A 1x1 shortcut multiplies the sub-sampled
    pixels: (M, C) @ (C, F), (C, M) @ (M, F), (M, F) @ (F, C)."""
    c, h, w = input_shape
    products = []

    def kernel_rows(h, h2, cin, stride):  # (output rows, K) of each product: one folded, or one per kernel row
        if 3 * cin < conv2d.MIN_ROW_COLUMNS:
            return [(h2, 9 * cin)]
        return [(sum(0 <= stride * a + g - 1 < h for a in range(h2)), 3 * cin) for g in range(3)]

    def conv_products(h, w, cin, cout, stride, filter_grad=True):  # forward (+ filter gradient); -> (H', W')
        h2, w2 = -(-h // stride), -(-w // stride)
        for rows, k in kernel_rows(h, h2, cin, stride):
            m = batch * rows * w2
            products.extend([(m, k, cout), (k, m, cout)] if filter_grad else [(m, k, cout)])
        return h2, w2

    def conv3x3(h, w, cin, cout, stride, with_dx=True):
        h2, w2 = conv_products(h, w, cin, cout, stride)
        if with_dx and stride == 1:  # the transposed convolution: a forward of dout, F channels in, C out
            conv_products(h2, w2, cout, cin, 1, filter_grad=False)
        elif with_dx:
            products.extend((batch * rows * w2, cout, k) for rows, k in kernel_rows(h, h2, cin, stride))
        return h2, w2

    h, w = conv3x3(h, w, c, 16, 1, with_dx=False)  # the stem
    for cin, cout, stride in RESNET8_BLOCKS:
        h2, w2 = conv3x3(h, w, cin, cout, stride)  # conv1
        conv3x3(h2, w2, cout, cout, 1)  # conv2
        if stride != 1 or cin != cout:  # the 1x1 shortcut
            m = batch * h2 * w2
            products.extend([(m, cin, cout), (cin, m, cout), (m, cout, cin)])
        h, w = h2, w2
    return products


def products_seconds(products, repeats: int = 15) -> float:
    """The summed median time of the (M, K) @ (K, F) products, each timed at its own shape (one thread)."""
    rng = np.random.default_rng(0)
    total = 0.0
    for m, k, f in products:
        a = rng.standard_normal((m, k)).astype(np.float32)  # (M, K)
        b = rng.standard_normal((k, f)).astype(np.float32)  # (K, F)
        total += median_seconds(lambda: a @ b, repeats)  # (M, K) @ (K, F)
    return total


def resnet_torch_step_fn(X, y):
    import torch
    from torch import nn
    torch.set_num_threads(1)
    torch.manual_seed(0)

    def conv_bn(cin, cout, k, stride):
        return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout, 3, 1))
            self.shortcut = (nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout
                             else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    model = nn.Sequential(*conv_bn(1, 16, 3, 1), nn.ReLU(), Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    return torch_sgd_step(model, X, y)


def resnet_row(X, y, rounds: int, steps: int) -> dict:
    np_step, th_step = model_step_fn(models.network_from("resnet"), X, y), resnet_torch_step_fn(X, y)
    np_times, th_times, ratios = [], [], []
    for _ in range(rounds):  # interleaved, as for LeNet
        np_times.append(median_seconds(np_step, steps))
        th_times.append(median_seconds(th_step, steps))
        ratios.append(th_times[-1] / np_times[-1])
    t_np, t_th = statistics.median(np_times), statistics.median(th_times)
    products = resnet_products()
    floor = products_seconds(products)
    flops = sum(2 * m * k * f for m, k, f in products)
    result = {"numpy_step_ms": t_np * 1e3, "torch_step_ms": t_th * 1e3,
              "ratio_numpy_over_torch": statistics.median(ratios), "gemm_gflop_per_step": flops / 1e9,
              "gemm_only_step_ms": floor * 1e3, "best_possible_ratio": t_th / floor}
    print(f"resnet numpy  : {t_np * 1e3:6.1f} ms/step  {BATCH / t_np:7.0f} images/s")
    print(f"resnet pytorch: {t_th * 1e3:6.1f} ms/step  {BATCH / t_th:7.0f} images/s")
    print(f"resnet numpy speed / pytorch speed (median of {rounds} rounds): {statistics.median(ratios):.2f}x "
          f"(target >= 0.8)")
    print(f"resnet matrix products of one step: {flops / 1e9:.2f} GFLOP, {floor * 1e3:.1f} ms timed at their shapes "
          f"({floor / t_np:.0%} of the NumPy step); best ratio possible with these products: {t_th / floor:.2f}x")
    return result


def model_step_fn(model, X, y):
    """One single-process step of any ``base.Model``: gradient (dropout's rng too), running statistics if any,
    Nesterov update."""
    params = model.init_params(0)
    spec = base.param_spec(params)
    flat = base.flatten(params, spec)
    state = [flat, sgd_nesterov.init(flat)]
    rng = np.random.default_rng(0)

    def step():
        _, grads = model.loss_and_grads(base.unflatten(state[0], spec), X, y, train=True, rng=rng, l2=5e-4)
        state[0], state[1] = update.apply_update(model, spec, state[0], base.flatten(grads, spec), len(y), state[1],
                                                   lr=0.01, momentum=0.9)
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and framework")
    ap.add_argument("--model", default="lenet,resnet", help="which rows: lenet, resnet")
    args = ap.parse_args()
    tasks.tune_process(1)
    if "resnet" in args.model.split(","):
        rng = np.random.default_rng(0)
        X = rng.uniform(-1, 1, (BATCH, 1, 28, 28)).astype(np.float32)
        save("kernel", {"resnet": resnet_row(X, rng.integers(0, 10, BATCH), args.rounds, args.steps)})
    if "lenet" not in args.model.split(","):
        return
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (BATCH, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    np_step = model_step_fn(models.network_from("lenet"), X, y)
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
    flops, gflops = gemm_flops(), sgemm_gflops()
    floor = flops / (gflops * 1e9)
    result.update(gemm_gflop_per_step=flops / 1e9, sgemm_gflops=gflops, gemm_only_step_ms=floor * 1e3)
    print(f"matrix products of one step: {flops / 1e9:.2f} GFLOP; SGEMM on this core at conv2's shape "
          f"{gflops:.0f} GFLOP/s; so the products alone take {floor * 1e3:.1f} ms "
          f"({floor / t_np:.0%} of the NumPy step)")
    if th_step:
        result["best_possible_ratio"] = t_th / floor
        print(f"best ratio possible with these products and nothing else: {t_th / floor:.2f}x PyTorch")
    save("kernel", result)


if __name__ == "__main__":
    main()

"""A convolution followed by max pooling, computed in bands of output rows: mathematically ``max_pool2d(conv2d(x))``,
layout (H, N, W, C). Done layer by layer, the convolution's full output (LeNet's conv1: 6.4 MB at batch 64) is
written to memory, read back by the pool, and its gradient is written and read again in the backward pass; on one
core here that traffic, not arithmetic, dominates those layers. In bands of a few output rows (a multiple of the
pool size) the band's output stays in cache between the product and the pool, and its gradient between the pool's
routing and the filter-gradient product."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import conv2d, max_pool2d, relu
from .layer import Layer

#: target size of one band of convolution output: well inside a 2 MiB L2 cache
BAND_BYTES = 512 * 1024


class Cache(NamedTuple):
    conv: conv2d.Columns
    pools: list  # one max_pool2d cache per band
    band_rows: int
    size: int


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pad: int, size: int = 2):
    """x (H, N, W, C), w (F, C, HH, WW), b (F,) or None -> out (Hout / size, N, Wout / size, F), cache."""
    conv, builder = conv2d.columns(x, w, pad)
    h_out, n, w_out, f = conv.out_shape
    if h_out % size or w_out % size:
        raise ValueError(f"conv2d_pool: output {h_out}x{w_out} is not a multiple of the pool size {size}")
    row_bytes = n * w_out * f * x.dtype.itemsize
    band_rows = size * max(1, BAND_BYTES // (size * row_bytes))
    band = np.empty((band_rows, n, w_out, f), x.dtype)  # reused by every band
    out = np.empty((h_out // size, n, w_out // size, f), x.dtype)
    pools = []
    for lo in range(0, h_out, band_rows):
        hi = min(lo + band_rows, h_out)
        builder.for_outputs(hi)
        conv2d.output_rows(conv, b, lo, hi, band[:hi - lo])  # (hi-lo, N, Wout, F)
        out[lo // size:hi // size], pool = max_pool2d.forward(band[:hi - lo], size)
        pools.append(pool)
    builder.finish()
    return out, Cache(conv, pools, band_rows, size)


def backward(dout: np.ndarray, cache: Cache, need_dx: bool = True):
    """dout (Hout / size, N, Wout / size, F) -> dx (H, N, W, C) or None, dw (F, C, HH, WW), db (F,)."""
    conv, pools, band_rows, size = cache
    h_out, n, w_out, f = conv.out_shape
    dw_rows = np.zeros(conv.w_rows.shape, dout.dtype)  # (HH/fold, K, F)
    db = np.zeros(f, dout.dtype)
    dconv = np.empty(conv.out_shape, dout.dtype) if need_dx else None  # (Hout, N, Wout, F)
    for lo, pool in zip(range(0, h_out, band_rows), pools):
        hi = min(lo + band_rows, h_out)
        dband = max_pool2d.backward(dout[lo // size:hi // size], pool,
                                    out=None if dconv is None else dconv[lo:hi])  # (hi-lo, N, Wout, F)
        conv2d.add_weight_grads(conv, dband, lo, hi, dw_rows)
        db += conv2d.bias_grad(dband)
    dx = conv2d.input_gradient(dconv, conv) if need_dx else None
    return dx, conv2d.filters(dw_rows, conv.w_shape), db


class Conv2DPool(Layer):
    """conv2d (stride 1) -> [relu] -> max_pool as one layer with the conv's parameters (``nn.plan`` puts it where they
    occur), the ReLU after the pool (max and ReLU commute exactly, values and gradients: a quarter of the work)."""

    def __init__(self, conv: conv2d.Conv2D, with_relu: bool, pool: max_pool2d.MaxPool2D):
        super().__init__(conv.name, {})
        self.conv, self.relu, self.pool = conv, with_relu, pool

    def names(self):
        return self.conv.names()

    def forward(self, p, x, train, rng):
        out, cache = forward(x, p["W"], p.get("b"), self.conv.pad, self.pool.size)  # (H'/s, N, W'/s, F)
        out, relu_cache = relu.forward(out) if self.relu else (out, None)
        return out, (cache, relu_cache), {}

    def backward(self, p, dout, cache, need_dx=True, overwrite=False):
        cache, relu_cache = cache
        if relu_cache is not None:
            dout = relu.backward(dout, relu_cache, overwrite_dout=overwrite)
        dx, dw, db = backward(dout, cache, need_dx=need_dx)
        return dx, self.conv.grads(dw, db)

"""Max pooling over non-overlapping ``size x size`` windows (stride = size), layout (H, N, W, C). Pooling is separable:
the max over a window is the max over its rows of the max over its columns. The row pass works on runs of N*W*C
contiguous values and the column pass on half the data; both are far cheaper than ``size**2`` strided passes. Each pass
records which input won (uint8), so the backward pass routes every gradient to exactly one input (the first maximum on
ties), with no equality masks."""
from __future__ import annotations

import numpy as np

from .layer import Pool


def forward(x: np.ndarray, size: int = 2):
    """x (H, N, W, C), H and W multiples of ``size`` -> out (H / size, N, W / size, C), cache (the winners of both
    passes and the shapes: what ``backward`` needs)."""
    h, n, w, c = x.shape
    if h % size or w % size:
        raise ValueError(f"max_pool2d: input {h}x{w} is not a multiple of the pool size {size}")
    rows, win_h = _max_along(x.reshape(h // size, size, n * w * c), axis=1)  # (H/s, N*W*C)
    out, win_w = _max_along(rows.reshape(h // size, n, w // size, size, c), axis=3)  # (H/s, N, W/s, C)
    return out, (win_h, win_w, x.shape, size)


def backward(dout: np.ndarray, cache, out: np.ndarray | None = None) -> np.ndarray:
    """dout (H / size, N, W / size, C) -> dx (H, N, W, C), written into ``out`` (C-contiguous) if given."""
    win_h, win_w, (h, n, w, c), size = cache
    if out is not None and (out.shape != (h, n, w, c) or not out.flags.c_contiguous):
        raise ValueError(f"max_pool2d: out must be a C-contiguous {(h, n, w, c)} array")
    drows = _route(dout, win_w, size, axis=3)  # (H/s, N, W/s, s, C)
    dx = _route(drows.reshape(h // size, n * w * c), win_h, size, axis=1,
                out=None if out is None else out.reshape(h // size, size, n * w * c))  # (H/s, s, N*W*C)
    return dx.reshape(h, n, w, c)


def _max_along(v: np.ndarray, axis: int):
    """Max over ``axis`` (which is removed) and, for k >= 1, the masks "entry k beat entries 0..k-1"."""
    take = [slice(None)] * v.ndim
    take[axis] = 0
    best, beats = v[tuple(take)], []
    if v.shape[axis] == 1:  # a window of one
        return best.copy(), beats
    for k in range(1, v.shape[axis]):
        take[axis] = k
        candidate = v[tuple(take)]
        beats.append(candidate > best)  # strict: the first maximum wins ties
        best = np.maximum(best, candidate, out=None if k == 1 else best)  # k == 1: a new array, not a view of v
    return best, beats


def _route(dout: np.ndarray, beats: list, size: int, axis: int, out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of ``_max_along``: dout placed at the winning index of a new ``axis`` of length ``size``. The winner
    is the last k whose mask is set (k = 0 if none), so walk k downwards and keep what no later entry claimed. Masks
    multiply: np.where is ~10x slower on random masks here."""
    shape = list(dout.shape)
    shape.insert(axis, size)
    dv = np.empty(shape, dout.dtype) if out is None else out
    put = [slice(None)] * len(shape)
    unclaimed = None
    for k in range(size - 1, -1, -1):
        put[axis] = k
        if k == 0:
            wins = unclaimed
        else:
            wins = beats[k - 1] if unclaimed is None else beats[k - 1] & unclaimed
            unclaimed = ~beats[k - 1] if unclaimed is None else unclaimed & ~beats[k - 1]
        if wins is None:
            dv[tuple(put)] = dout
        else:
            np.multiply(dout, wins, out=dv[tuple(put)])
    return dv


class MaxPool2D(Pool):
    kind, functions = "max_pool", (forward, backward)

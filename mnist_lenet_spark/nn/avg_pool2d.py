"""Average pooling over non-overlapping ``size x size`` windows (stride = size), layout (H, N, W, C)."""
from __future__ import annotations

import numpy as np

from .layer import Pool


def forward(x: np.ndarray, size: int = 2):
    """x (H, N, W, C), H and W multiples of ``size`` -> out (H / size, N, W / size, C), cache (x's shape, size)."""
    h, n, w, c = x.shape
    return x.reshape(h // size, size, n, w // size, size, c).mean(axis=(1, 4)), (x.shape, size)


def backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout (H / size, N, W / size, C) -> dx (H, N, W, C): each input of a window gets its share."""
    (h, n, w, c), s = cache
    dx = np.empty((h // s, s, n, w // s, s, c), dout.dtype)
    dx[...] = (dout / (s * s))[:, None, :, :, None, :]  # (H/s, 1, N, W/s, 1, C) broadcast over each window
    return dx.reshape(h, n, w, c)


class AvgPool2D(Pool):
    kind, functions = "avg_pool", (forward, backward)

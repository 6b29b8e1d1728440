"""Images (H, N, W, C) as rows (N, C * H * W) in (C, H, W) order, as SystemML's ``nn`` and LeNet flatten them."""
from __future__ import annotations

import numpy as np

from .layer import Layer


def forward(x: np.ndarray):
    """x (H, N, W, C) -> out (N, C*H*W), cache (x's shape); flat x (N, D) passes through (cache None)."""
    if x.ndim == 2:
        return x, None
    h, n, w, c = x.shape
    return x.transpose(1, 3, 0, 2).reshape(n, -1), x.shape  # (N, C, H, W) -> (N, C*H*W)


def backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout (N, C*H*W) -> dx (H, N, W, C)."""
    if cache is None:
        return dout
    h, n, w, c = cache
    return np.ascontiguousarray(dout.reshape(n, c, h, w).transpose(2, 0, 3, 1))  # (N, C, H, W) -> (H, N, W, C)


class Flatten(Layer):
    kind, functions = "flatten", (forward, backward)

    def build(self, in_shape):
        return (int(np.prod(in_shape)),)

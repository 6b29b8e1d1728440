"""Global average pooling of HNWC activations: (H, N, W, C) -> (N, C), the mean over each channel's H x W."""
from __future__ import annotations

import numpy as np

from .layer import Layer


def forward(x: np.ndarray):
    """x (H, N, W, C) -> out (N, C); the cache is x's shape."""
    return x.mean(axis=(0, 2)), x.shape


def backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout (N, C) -> dx (H, N, W, C): each position gets dout / (H * W)."""
    H, N, W, C = cache
    dx = np.empty(cache, dout.dtype)
    dx[...] = (dout / (H * W))[None, :, None, :]  # (1, N, 1, C) broadcast to (H, N, W, C)
    return dx


class GlobalAvgPool(Layer):
    kind, functions = "global_avg_pool", (forward, backward)

    def build(self, in_shape):
        return self.images(in_shape)[:1]

"""Inverted dropout: keep each unit with probability ``keep_prob`` and scale kept units by 1/keep_prob."""
from __future__ import annotations

import numpy as np


def forward(x: np.ndarray, keep_prob: float, rng: np.random.Generator):
    """x any shape -> out same shape, cache (the scaled mask).

    ``rng`` is passed in, never global, so a Spark task re-executed with the same seed drops
    the same units.
    """
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"dropout: keep_prob must be in (0, 1], got {keep_prob}")
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    mask = (rng.random(x.shape, dtype=dtype) < keep_prob).astype(x.dtype)
    mask *= x.dtype.type(1.0 / keep_prob)
    return x * mask, mask


def backward(dout: np.ndarray, cache) -> np.ndarray:
    """dx = dout * mask, same shape as dout."""
    return dout * cache

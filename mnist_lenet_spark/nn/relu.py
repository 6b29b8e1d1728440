"""Rectified linear unit, any shape."""
from __future__ import annotations

import numpy as np

from .layer import Layer


def forward(x: np.ndarray):
    """out = max(x, 0), same shape as x; the cache is ``out`` itself. Computed on the floats' bits viewed as signed
    integers of the same width: a float is negative exactly when its integer is (the sign bit), and the integer max
    skips the float max's NaN handling, ~2x faster here. Same values, -0.0 becomes 0.0; a NaN with its sign bit set
    becomes 0."""
    as_int = np.dtype(f"i{x.dtype.itemsize}")
    out = np.maximum(x.view(as_int), 0).view(x.dtype)
    return out, out


def backward(dout: np.ndarray, cache, overwrite_dout: bool = False) -> np.ndarray:
    """dx = dout where the input was positive, else 0; same shape as dout. ``overwrite_dout`` writes dx into
    dout (the caller's own temporary), sparing an allocation and a pass."""
    # a multiply, not np.where: ~10x faster on random masks
    return np.multiply(dout, cache > 0, out=dout if overwrite_dout else None)


class ReLU(Layer):
    kind, functions = "relu", (forward, backward)

    def backward(self, p, dout, cache, need_dx=True, overwrite=False):
        return backward(dout, cache, overwrite_dout=overwrite), {}

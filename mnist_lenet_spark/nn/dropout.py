"""Inverted dropout: keep each unit with probability ``keep_prob`` and scale kept units by 1/keep_prob."""
from __future__ import annotations

import numpy as np

from .layer import Layer


def forward(x: np.ndarray, keep_prob: float, rng: np.random.Generator):
    """x any shape -> out same shape, cache (the scaled mask). ``rng`` is passed in, never global, so a Spark task
    re-executed with the same seed drops the same units."""
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"dropout: keep_prob must be in (0, 1], got {keep_prob}")
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    mask = (rng.random(x.shape, dtype=dtype) < keep_prob).astype(x.dtype)
    mask *= x.dtype.type(1.0 / keep_prob)
    return x * mask, mask


def backward(dout: np.ndarray, cache) -> np.ndarray:
    """dx = dout * mask, same shape as dout."""
    return dout * cache


class Dropout(Layer):
    kind = "dropout"  # option ``rate``: the share of units dropped while training

    def __init__(self, name: str, options: dict):
        super().__init__(name, options)
        self.rate = float(options["rate"])
        if not 0 <= self.rate < 1:
            self.refuse(f"rate must be in [0, 1), got {self.rate}")

    def forward(self, p, x, train, rng):
        if not train or self.rate == 0:
            return x, None, {}
        if rng is None:
            raise ValueError(f"layer '{self.name}' (dropout): training needs a numpy.random.Generator")
        return (*forward(x, 1.0 - self.rate, rng), {})

    def backward(self, p, dout, cache, need_dx=True, overwrite=False):
        return (dout if cache is None else backward(dout, cache)), {}

"""Fully connected layer: out = x @ W + b."""
from __future__ import annotations

import numpy as np


def init(fan_in: int, fan_out: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """He initialisation: W (D, M) ``randn * sqrt(2 / D)`` float32, b (M,) zeros."""
    w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
    return w.astype(np.float32), np.zeros(fan_out, np.float32)


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray):
    """x (N, D), w (D, M), b (M,) -> out (N, M), cache."""
    out = x @ w  # (N, D) @ (D, M) -> (N, M)
    out += b
    return out, (x, w)


def backward(dout: np.ndarray, cache):
    """dout (N, M) -> dx (N, D), dw (D, M), db (M,)."""
    x, w = cache
    dx = dout @ w.T  # (N, M) @ (M, D) -> (N, D)
    dw = x.T @ dout  # (D, N) @ (N, M) -> (D, M)
    return dx, dw, dout.sum(axis=0)

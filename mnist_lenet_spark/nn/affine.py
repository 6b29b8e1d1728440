"""Fully connected layer: out = x @ W + b (a network's ``dense`` layer)."""
from __future__ import annotations

import numpy as np

from .layer import Weighted


def init(fan_in: int, fan_out: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """He initialisation: W (D, M) ``randn * sqrt(2 / D)`` float32, b (M,) zeros."""
    w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
    return w.astype(np.float32), np.zeros(fan_out, np.float32)


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """x (N, D), w (D, M), b (M,) or None -> out (N, M), cache."""
    out = x @ w  # (N, D) @ (D, M) -> (N, M)
    if b is not None:
        out += b
    return out, (x, w)


def backward(dout: np.ndarray, cache):
    """dout (N, M) -> dx (N, D), dw (D, M), db (M,)."""
    x, w = cache
    dx = dout @ w.T  # (N, M) @ (M, D) -> (N, D)
    dw = x.T @ dout  # (D, N) @ (N, M) -> (D, M)
    return dx, dw, dout.sum(axis=0)


class Dense(Weighted):
    """Options ``units``, ``bias`` (true), ``init`` ("he"); flat input (N, D)."""
    kind = "dense"

    def __init__(self, name: str, options: dict):
        super().__init__(name, options)
        self.units = int(options["units"])
        if self.units < 1:
            self.refuse(f"units must be >= 1, got {self.units}")

    def build(self, in_shape):
        if len(in_shape) != 1:
            self.refuse("needs flat input (N, D): put a flatten or a global average pool before it", in_shape)
        return (self.units,)

    def init(self, in_shape, rng):
        return self.weights(*init(in_shape[0], self.units, rng))

    def forward(self, p, x, train, rng):
        return (*forward(x, p["W"], p.get("b")), {})  # (N, D) @ (D, M) -> (N, M)

    def backward(self, p, dout, cache, need_dx=True, overwrite=False):
        dx, dw, db = backward(dout, cache)
        return dx, self.grads(dw, db)

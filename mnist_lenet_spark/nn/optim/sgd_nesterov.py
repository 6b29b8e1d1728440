"""SGD with Nesterov momentum, SystemML's ``optim/sgd_nesterov.dml`` rule.

    v_prev = v
    v = momentum * v - lr * dw
    w = w - momentum * v_prev + (1 + momentum) * v

Works on any array (the trainers pass one flat parameter vector). Pure: the inputs are not
modified; state goes in and comes back out.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class NesterovState(NamedTuple):
    velocity: np.ndarray


def init(w: np.ndarray) -> NesterovState:
    """Zero velocity, same shape and dtype as w."""
    return NesterovState(np.zeros_like(w))


def update(w: np.ndarray, dw: np.ndarray, state: NesterovState, *, lr: float,
           momentum: float) -> tuple[np.ndarray, NesterovState]:
    """One step. w, dw and the velocity share one shape; returns (next w, next state)."""
    dtype = w.dtype.type
    v_prev = state.velocity
    v = v_prev * dtype(momentum)  # new arrays, in-place after: 6 passes over P values, 3 allocations
    step = dw * dtype(-lr)
    v += step
    w_next = v * dtype(1 + momentum)
    np.multiply(v_prev, dtype(momentum), out=step)
    w_next -= step
    w_next += w
    return w_next, NesterovState(v)

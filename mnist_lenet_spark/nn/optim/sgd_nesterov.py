"""SGD with Nesterov momentum, SystemML's ``optim/sgd_nesterov.dml`` rule.

    v_prev = v
    v = momentum * v - lr * dw
    w = w - momentum * v_prev + (1 + momentum) * v

Works on any array (the trainers pass one flat parameter vector). Pure: the inputs are not modified; state goes in
and comes back out."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

CHUNK = 32768  # values per chunk: 128 KiB per float32 array, so a chunk's arrays stay in L2


class NesterovState(NamedTuple):
    velocity: np.ndarray


def init(w: np.ndarray) -> NesterovState:
    return NesterovState(np.zeros_like(w))


def update(w: np.ndarray, dw: np.ndarray, state: NesterovState, *, lr: float,
           momentum: float) -> tuple[np.ndarray, NesterovState]:
    """One step. w, dw and the velocity share one shape; returns (next w, next state)."""
    dtype = w.dtype.type
    mu, neg_lr, one_mu = dtype(momentum), dtype(-lr), dtype(1 + momentum)
    v_prev = state.velocity.reshape(-1)
    w_flat, dw_flat = w.reshape(-1), dw.reshape(-1)
    w_next, v = np.empty_like(w_flat), np.empty_like(v_prev)
    tmp = np.empty(min(CHUNK, w_flat.size), w.dtype)
    # In cache-sized chunks: the seven element-wise passes then touch memory about once.
    for a in range(0, w_flat.size, CHUNK):
        b = min(a + CHUNK, w_flat.size)
        t, vc, wc = tmp[:b - a], v[a:b], w_next[a:b]
        np.multiply(v_prev[a:b], mu, out=vc)  # v = mu * v_prev - lr * dw
        np.multiply(dw_flat[a:b], neg_lr, out=t)
        vc += t
        np.multiply(vc, one_mu, out=wc)  # w = w - mu * v_prev + (1 + mu) * v
        np.multiply(v_prev[a:b], mu, out=t)
        wc -= t
        wc += w_flat[a:b]
    return w_next.reshape(w.shape), NesterovState(v.reshape(w.shape))

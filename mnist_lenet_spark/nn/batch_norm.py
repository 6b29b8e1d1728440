"""Batch normalisation over every axis but the last (the channels): spatial batch norm for HNWC activations
``(H, N, W, C)``, plain batch norm for ``(N, C)``.

Training normalises with the mini-batch's own mean and (biased) variance, as SystemDS's
``batch_norm2d`` and PyTorch do; inference uses running estimates. The batch's statistics are
returned beside the output, so that the caller (a model, and in data-parallel training the
driver, which combines them across tasks weighted by example count) keeps the running ones.
"""
from __future__ import annotations

import numpy as np

EPSILON = 1e-5


def init(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """gamma (C,) ones, beta (C,) zeros, float32."""
    return np.ones(channels, np.float32), np.zeros(channels, np.float32)


def forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = EPSILON):
    """Training mode. x (..., C), gamma and beta (C,) -> out (..., C), cache, (mean (C,), var (C,))."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)  # (C,)
    centred = x - mean  # (..., C)
    var = np.mean(centred * centred, axis=axes)  # (C,) biased: the batch's own
    inv_std = 1.0 / np.sqrt(var + eps)  # (C,)
    xhat = centred * inv_std  # (..., C)
    out = xhat * gamma + beta
    return out, (xhat, gamma, inv_std), (mean, var)


def forward_inference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                      running_var: np.ndarray, eps: float = EPSILON) -> np.ndarray:
    """Inference mode: x (..., C) normalised with the running (C,) statistics -> out (..., C)."""
    scale = gamma / np.sqrt(running_var + eps)  # (C,)
    return x * scale + (beta - running_mean * scale)


def backward(dout: np.ndarray, cache):
    """dout (..., C) -> dx (..., C), dgamma (C,), dbeta (C,).

    With m values per channel and dxhat = dout * gamma:
    dx = inv_std / m * (m * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)), sums over all but the last axis.
    """
    xhat, gamma, inv_std = cache
    axes = tuple(range(dout.ndim - 1))
    m = dout.size // dout.shape[-1]
    dbeta = dout.sum(axis=axes)  # (C,)
    dgamma = np.sum(dout * xhat, axis=axes)  # (C,)
    # sum(dxhat) = gamma * dbeta and sum(dxhat * xhat) = gamma * dgamma: no second pass over dxhat
    dx = dout * gamma - (gamma * dbeta / m) - xhat * (gamma * dgamma / m)  # (..., C)
    dx *= inv_std
    return dx, dgamma, dbeta

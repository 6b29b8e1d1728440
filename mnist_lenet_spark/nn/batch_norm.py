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
    x2 = x.reshape(-1, x.shape[-1])  # (M, C), M values per channel
    ones = np.ones(len(x2), x.dtype)
    mean = ones @ x2 / len(x2)  # (C,)
    centred = x2 - mean  # (M, C)
    var = ones @ (centred * centred) / len(x2)  # (C,) biased: the batch's own
    inv_std = (1.0 / np.sqrt(var + eps)).astype(x.dtype)  # (C,)
    xhat = np.multiply(centred, inv_std, out=centred)  # (M, C)
    out = xhat * gamma + beta
    return out.reshape(x.shape), (xhat, gamma, inv_std), (mean, var)


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
    xhat, gamma, inv_std = cache  # xhat (M, C)
    dout2 = dout.reshape(xhat.shape)  # (M, C)
    m = len(dout2)
    ones = np.ones(m, dout.dtype)
    dbeta = ones @ dout2  # (C,); a product with ones: several times faster than sum(axis=0) over (M, C) here
    dgamma = ones @ (dout2 * xhat)  # (C,)
    # sum(dxhat) = gamma * dbeta and sum(dxhat * xhat) = gamma * dgamma: no second pass over dxhat
    dx = dout2 * (gamma * inv_std)  # (M, C)
    dx -= (gamma * dbeta / m) * inv_std
    dx -= xhat * ((gamma * dgamma / m) * inv_std)
    return dx.reshape(dout.shape), dgamma, dbeta

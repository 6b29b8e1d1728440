"""Batch normalisation over every axis but the last (the channels): spatial batch norm for HNWC activations ``(H, N, W,
C)``, plain batch norm for ``(N, C)``. Training normalises with the mini-batch's own mean and (biased) variance, as
SystemDS's ``batch_norm2d`` and PyTorch do; inference uses running estimates. The batch's statistics are returned beside
the output, so that the caller (a model, and in data-parallel training the driver, which combines them across tasks
weighted by example count) keeps the running ones.

Speed. With few channels (a ResNet's 16), a per-channel vector broadcast over an ``(M, C)`` matrix runs ~3x slower than
over the same memory viewed as ``(H * N, W * C)`` with the vector tiled W times (longer inner loops), so every pass here
works on that "tiled" view; per-channel sums are products with ones (several times faster than ``sum(axis=0)``) folded
over the W tiles. Every pass is written as ``x * a + b`` per channel with the constants worked out on (C,) vectors
first."""
from __future__ import annotations

import numpy as np

from .layer import Layer

EPSILON = 1e-5


def init(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """gamma (C,) ones, beta (C,) zeros, float32."""
    return np.ones(channels, np.float32), np.zeros(channels, np.float32)


def _tiled(x: np.ndarray) -> np.ndarray:
    """x (..., W, C) -> the same memory as (R, W * C); (N, C) stays (N, C)."""
    return x.reshape(-1, x.shape[-1] * x.shape[-2]) if x.ndim >= 3 else x.reshape(-1, x.shape[-1])


def _channel_sums(rows: np.ndarray, channels: int) -> np.ndarray:
    """rows (R, T * C) -> (C,) float64: the sum over the rows and the T tiles of each channel."""
    ones = np.ones(len(rows), rows.dtype)
    return (ones @ rows).reshape(-1, channels).sum(axis=0, dtype=np.float64)  # (R,) @ (R, T*C) -> (T*C,) -> (C,)


def _tile(v: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(C,) -> (T * C,) in rows' dtype: one value per column of ``rows``."""
    return np.tile(v.astype(rows.dtype), rows.shape[1] // len(v))


def forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = EPSILON):
    """Training mode. x (..., C), gamma and beta (C,) -> out (..., C), cache, (mean (C,), var (C,))."""
    c = x.shape[-1]
    rows = _tiled(x)  # (R, T*C): m = R*T values per channel
    m = x.size // c
    mean = _channel_sums(rows, c) / m  # (C,)
    centred = rows - _tile(mean, rows)  # (R, T*C)
    squares = np.multiply(centred, centred)
    var = _channel_sums(squares, c) / m  # (C,) biased: the batch's own
    inv_std = 1.0 / np.sqrt(var + eps)  # (C,) float64
    out = np.multiply(centred, _tile(gamma * inv_std, rows), out=squares)  # (R, T*C): gamma * xhat ...
    out += _tile(beta, rows)  # ... + beta
    return out.reshape(x.shape), (centred, gamma, inv_std), (mean.astype(x.dtype), var.astype(x.dtype))


def forward_inference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                      running_var: np.ndarray, eps: float = EPSILON) -> np.ndarray:
    """Inference mode: x (..., C) normalised with the running (C,) statistics -> out (..., C)."""
    rows = _tiled(x)  # (R, T*C)
    scale = gamma / np.sqrt(running_var.astype(np.float64) + eps)  # (C,)
    out = rows * _tile(scale, rows)
    out += _tile(beta - running_mean * scale, rows)
    return out.reshape(x.shape)


def backward_inference(dout: np.ndarray, x: np.ndarray, gamma: np.ndarray, running_mean: np.ndarray,
                       running_var: np.ndarray, eps: float = EPSILON):
    """Of ``forward_inference``, a per-channel affine map: dout, x (..., C) -> dx (..., C), dgamma (C,), dbeta (C,)."""
    inv_std = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)  # (C,)
    xhat = (x - running_mean) * inv_std.astype(x.dtype)  # (..., C)
    axes = tuple(range(dout.ndim - 1))
    dx = dout * (gamma * inv_std).astype(dout.dtype)
    return dx, (dout * xhat).sum(axis=axes).astype(dout.dtype), dout.sum(axis=axes).astype(dout.dtype)


def backward(dout: np.ndarray, cache):
    """dout (..., C) -> dx (..., C), dgamma (C,), dbeta (C,). With m values per channel, xhat = centred * inv_std
    and dxhat = dout * gamma:
    dx = inv_std / m * (m * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)), sums over all but the last axis;
    sum(dxhat) = gamma * dbeta and sum(dxhat * xhat) = gamma * dgamma, so per channel
    dx = k * (dout - dbeta / m) - (k * inv_std * dgamma / m) * centred with k = gamma * inv_std."""
    centred, gamma, inv_std = cache  # centred (R, T*C), gamma (C,), inv_std (C,) float64
    c = len(gamma)
    rows = _tiled(dout)  # (R, T*C)
    m = centred.size // c
    dbeta = _channel_sums(rows, c)  # (C,)
    product = np.multiply(rows, centred)  # (R, T*C)
    dgamma = _channel_sums(product, c) * inv_std  # (C,): sum(dout * xhat)
    k = gamma * inv_std  # (C,)
    dx = np.multiply(centred, _tile(-k * inv_std * dgamma / m, rows), out=product)  # (R, T*C)
    dx += rows * _tile(k, rows)
    dx += _tile(-k * dbeta / m, rows)
    return dx.reshape(dout.shape), dgamma.astype(dout.dtype), dbeta.astype(dout.dtype)


class BatchNorm(Layer):
    """Over the channels of images, or the features of flat input; its running statistics are untrained state."""
    kind, state = "batch_norm", ("running_mean", "running_var")

    def init(self, in_shape, rng):
        gamma, beta = init(in_shape[0])
        return {"gamma": gamma, "beta": beta, "running_mean": np.zeros_like(beta), "running_var": np.ones_like(gamma)}

    def names(self):
        return ("gamma", "beta") + self.state

    def forward(self, p, x, train, rng):
        if not train:
            return forward_inference(x, p["gamma"], p["beta"], p["running_mean"], p["running_var"]), (False, x), {}
        out, cache, (mean, var) = forward(x, p["gamma"], p["beta"])
        m = x.size // x.shape[-1]
        return out, (True, cache), {"running_mean": mean, "running_var": var * (m / max(m - 1, 1))}  # unbiased

    def backward(self, p, dout, cache, need_dx=True, overwrite=False):
        train, inner = cache
        if train:
            dx, dgamma, dbeta = backward(dout, inner)
        else:  # normalised with the running statistics: a per-channel affine map
            dx, dgamma, dbeta = backward_inference(dout, inner, p["gamma"], p["running_mean"], p["running_var"])
        return dx, {"gamma": dgamma.astype(dout.dtype), "beta": dbeta.astype(dout.dtype)}

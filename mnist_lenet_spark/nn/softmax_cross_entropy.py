"""Softmax followed by the mean cross-entropy loss."""
from __future__ import annotations

import numpy as np


def softmax(scores: np.ndarray) -> np.ndarray:
    """scores (N, K) -> probabilities (N, K), computed stably."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def forward(scores: np.ndarray, y: np.ndarray):
    """scores (N, K), integer labels y (N,) -> (mean loss as float, cache)."""
    probs = softmax(scores)
    n = scores.shape[0]
    picked = probs[np.arange(n), y]
    loss = -float(np.mean(np.log(np.maximum(picked, np.finfo(probs.dtype).tiny))))
    return loss, (probs, y)


def backward(dloss: float, cache) -> np.ndarray:
    """dscores (N, K) = dloss * (probs - one_hot(y)) / N."""
    probs, y = cache
    n = probs.shape[0]
    dscores = probs.copy()
    dscores[np.arange(n), y] -= 1
    dscores *= probs.dtype.type(dloss / n)
    return dscores

"""The interface a model offers to be trained here, and helpers shared by every model.

A model is any object (a module is fine) with the attributes of ``Model``. The trainers only
call these, so a second model (say a small ResNet) goes through the same single-process and
Spark trainers unchanged.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

Params = dict[str, np.ndarray]
ParamSpec = list[tuple[str, tuple[int, ...]]]


class Model(Protocol):
    #: names of the parameters that carry the L2 penalty (weights, not biases)
    REGULARIZED: Sequence[str]
    #: (C, H, W) of one scaled input image; the data's uint8 images hold C x H x W pixels each, channel-major
    input_shape: tuple[int, int, int]
    #: how many classes: labels are 0 .. classes - 1, ``predict`` gives (N, classes)
    classes: int

    # Optional, for state that is not trained (batch norm's running statistics), kept in the parameter vector:
    # STATE names those entries; in training mode ``loss_and_grads`` puts the batch's statistics in their gradient
    # slots, and the trainer moves them by STATE_MOMENTUM towards the step's count-weighted average of those
    # (``training.update_state``) instead of taking an SGD step. A model with STATE always trains in training mode.
    # STATE: Sequence[str]; STATE_MOMENTUM: float

    def init_params(self, seed: int) -> Params:
        """Fresh float32 parameters, the same for the same seed."""

    def loss_and_grads(self, params: Params, X: np.ndarray, y: np.ndarray, *, train: bool = True,
                       rng: np.random.Generator | None = None,
                       l2: float = 0.0) -> tuple[float, Params]:
        """Mean loss over the batch plus ``0.5 * l2 * sum(W**2)`` over REGULARIZED, and its gradients."""

    def predict(self, params: Params, X: np.ndarray) -> np.ndarray:
        """(N, classes) class probabilities, inference mode."""


def param_spec(params: Params) -> ParamSpec:
    """The fixed (name, shape) list that orders the flat parameter vector."""
    return [(name, tuple(value.shape)) for name, value in params.items()]


def flatten(params: Params, spec: ParamSpec, dtype=None) -> np.ndarray:
    """dict -> one flat vector (P,), in ``spec`` order."""
    return np.concatenate([np.ravel(params[name]) for name, _ in spec]).astype(
        dtype or params[spec[0][0]].dtype, copy=False)


def unflatten(vector: np.ndarray, spec: ParamSpec) -> Params:
    """flat vector (P,) -> dict of views into it (no copy), shapes from ``spec``."""
    expected = sum(int(np.prod(shape)) for _, shape in spec)
    if vector.shape != (expected,):
        raise ValueError(f"parameter vector has shape {vector.shape}, the model expects ({expected},)")
    out, start = {}, 0
    for name, shape in spec:
        size = int(np.prod(shape))
        out[name] = vector[start:start + size].reshape(shape)
        start += size
    return out


def add_l2(params: Params, grads: Params, names: Sequence[str], l2: float, chunk: int = 32768) -> float:
    """Add the L2 gradient ``l2 * W`` to ``grads[k]`` in place for k in ``names``; return ``0.5 * l2 * sum(W**2)``.

    In cache-sized chunks, so each weight is read from memory once for both the penalty and
    the gradient (W3 alone is 6.4 MB: memory traffic, not arithmetic, is the cost here).
    """
    total = 0.0
    for k in names:
        if not grads[k].flags.c_contiguous:  # reshape would copy, and the update would be lost
            raise ValueError(f"add_l2: gradient {k!r} is not contiguous")
        w, g = params[k].reshape(-1), grads[k].reshape(-1)  # (P_k,), g a view
        scale = w.dtype.type(l2)
        tmp = np.empty(min(chunk, w.size), w.dtype)
        for a in range(0, w.size, chunk):
            wc = w[a:a + chunk]
            total += float(np.dot(wc, wc))
            t = tmp[:len(wc)]
            np.multiply(wc, scale, out=t)
            g[a:a + chunk] += t
    return 0.5 * l2 * total

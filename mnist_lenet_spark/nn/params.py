"""Parameters as the trainers move them: a dict by name, or one flat vector (P,) in the order of a fixed
(name, shape) list; and the L2 penalty over named weights."""
from __future__ import annotations

from typing import Sequence

import numpy as np

Params = dict[str, np.ndarray]
ParamSpec = list[tuple[str, tuple[int, ...]]]


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
    In cache-sized chunks, so each weight is read from memory once for both the penalty and the gradient (LeNet's
    fc1.W alone is 6.4 MB: memory traffic, not arithmetic, is the cost here)."""
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

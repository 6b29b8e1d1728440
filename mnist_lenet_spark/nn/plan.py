"""How a chain of layers runs (a network's, a residual block's paths): in order, but conv2d (stride 1) [-> relu] ->
max_pool as one ``conv2d_pool.Conv2DPool`` (conv and pool in cache-sized bands, the ReLU after the pool)."""
from __future__ import annotations

from typing import Sequence

from .conv2d_pool import Conv2DPool
from .layer import Layer


def plan(layers: Sequence[Layer]) -> tuple[Layer, ...]:
    ops, i = [], 0
    while i < len(layers):
        relu = i + 1 < len(layers) and layers[i + 1].kind == "relu"
        j = i + 1 + relu
        if layers[i].kind == "conv2d" and layers[i].stride == 1 and j < len(layers) and layers[j].kind == "max_pool":
            ops.append(Conv2DPool(layers[i], relu, layers[j]))
            i = j + 1
        else:
            ops.append(layers[i])
            i += 1
    return tuple(ops)

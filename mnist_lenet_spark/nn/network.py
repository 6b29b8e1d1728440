"""A network from a plain JSON-able definition, its layers run in order (as ``nn.plan`` says); no pyspark import. A
definition is ``{"input_shape": [C, H, W], "layers": [LAYER, ...]}``; a LAYER is a dict with a ``type`` (one of
``LAYER_TYPES``, a module each), its options, and an optional ``name`` (default: the type and a count, ``conv2d_1``).
The last layer gives (N, classes) scores; the loss is softmax cross-entropy. Parameters are named ``LAYER.W``, ... .
Shapes are worked out when the network is built: one that does not fit is a ``ShapeError`` naming the layer."""
from __future__ import annotations

import copy

import numpy as np

# every layer's module, so that its type is registered
from . import (affine, avg_pool2d, batch_norm, conv2d, dropout, flatten, global_avg_pool, max_pool2d,  # noqa: F401
               relu, residual, sigmoid, softmax_cross_entropy, tanh)
from .layer import (LAYER_TYPES, ShapeError, backward_chain, forward_chain, init_chain, make_layers,  # noqa: F401
                    shape_text, shapes)
from .params import add_l2
from .plan import plan

STATE_MOMENTUM = 0.1  # batch norm's running statistics move this far towards each step's (PyTorch's rule)


class Network:
    """A ``models.base.Model`` made from a definition (see the module docstring)."""
    STATE_MOMENTUM = STATE_MOMENTUM

    def __init__(self, definition: dict):
        self.definition = copy.deepcopy(definition)
        try:
            shape = tuple(int(n) for n in definition["input_shape"])
            specs = self.definition["layers"]
        except (KeyError, TypeError, ValueError):
            raise ShapeError("a network definition needs 'input_shape' [C, H, W] and 'layers' [...]") from None
        if len(shape) != 3 or min(shape) < 1:
            raise ShapeError(f"input_shape must be [channels, height, width] >= 1, got {list(shape)}")
        self.input_shape = shape
        self.layers = make_layers(specs, {})
        every = [layer for top in self.layers for layer in top.walk()]
        names = [layer.name for layer in every]
        if len(set(names)) != len(names):
            raise ShapeError(f"layer names must be unique: {sorted(n for n in set(names) if names.count(n) > 1)}")
        out = shapes(self.layers, shape)[-1]
        if len(out) != 1 or out[0] < 2:
            raise ShapeError(f"the last layer must give class scores (N, classes >= 2), it gives "
                             f"{shape_text(out)}: end with a dense layer")
        self.classes = out[0]
        self.ops = plan(self.layers)  # the layers as they run
        self.REGULARIZED = tuple(f"{layer.name}.{k}" for layer in every for k in layer.regularized)
        self.STATE = tuple(f"{layer.name}.{k}" for layer in every for k in layer.state)

    def init_params(self, seed: int) -> dict[str, np.ndarray]:
        """float32, in layer order: He (or LeCun) weights, zero biases, batch norm's gamma 1, beta 0, running (0, 1)."""
        return init_chain(self.layers, self.input_shape, np.random.default_rng(seed))

    def _scores(self, params, X, train, rng):
        """X (N, C, H, W) -> scores (N, classes), caches, batch statistics."""
        if X.ndim != 4 or X.shape[1:] != self.input_shape:
            raise ValueError(f"the network expects X of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {X.shape}")
        x = np.ascontiguousarray(X.transpose(2, 0, 3, 1))  # (H, N, W, C)
        return forward_chain(self.ops, params, x, train, rng)

    def loss_and_grads(self, params, X, y, *, train: bool = True, rng: np.random.Generator | None = None,
                       l2: float = 0.0):
        """Mean softmax cross-entropy + ``0.5 * l2 * sum(W**2)`` over REGULARIZED, and its gradients. In
        training mode (batch statistics, dropout) the STATE slots hold the batch's statistics; else zeros."""
        scores, caches, stats = self._scores(params, X, train, rng)
        loss, cache = softmax_cross_entropy.forward(scores, y)
        grads: dict[str, np.ndarray] = {}
        backward_chain(self.ops, params, softmax_cross_entropy.backward(1.0, cache), caches, grads, need_dx=False,
                       overwrite=True)
        for name in self.STATE:
            grads[name] = stats[name].astype(params[name].dtype) if train else np.zeros_like(params[name])
        grads = {k: np.ascontiguousarray(grads[k], dtype=params[k].dtype) for k in params}  # params' order
        if l2:
            loss += add_l2(params, grads, self.REGULARIZED, l2)
        return loss, grads

    def predict(self, params, X):
        """X (N, C, H, W) -> class probabilities (N, classes): inference mode."""
        scores, _, _ = self._scores(params, X, False, None)
        return softmax_cross_entropy.softmax(scores)

    def to_json(self) -> dict:
        """The definition with every layer named and its options explicit: ``Network(d.to_json())`` rebuilds it."""
        return {"input_shape": list(self.input_shape), "layers": [layer.config() for layer in self.layers]}

    def summary(self) -> str:
        """Each layer, its output shape and parameter count (a residual block's: its paths'), and the total."""
        rows = [("layer (type)", "output shape", "parameters"), ("input", shape_text(self.input_shape), "")]

        def add(layers, shape, indent):
            for layer, s in zip(layers, shapes(layers, shape)):
                count = sum(v.size for v in layer.init(s, np.random.default_rng(0)).values())
                rows.append((f"{indent}{layer.name} ({layer.kind})", shape_text(layer.build(s)), f"{count:,}"))
                for i, chain in enumerate(layer.chains):  # a residual block's branch, then "+ shortcut"
                    if i and getattr(layer, chain):
                        rows.append((f"{indent}  + {chain}", "", ""))
                    add(getattr(layer, chain), s, indent + "  " * (i + 1))
        add(self.layers, self.input_shape, "")
        total = sum(v.size for v in self.init_params(0).values())
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
        return "\n".join(lines + [f"total parameters: {total:,} (untrained state included)"])

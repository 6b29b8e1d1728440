"""A network composed of this package's layers, from a plain JSON-able definition: forward and backward run
through the layers in order, with nothing written per network. No pyspark import.

A definition is ``{"input_shape": [C, H, W], "layers": [LAYER, ...]}``; a LAYER is a dict with a ``type``
and its options (``LAYER_TYPES``), and an optional ``name`` (default: the type and a count, ``conv2d_1``).
A ``residual`` layer adds its ``branch`` (a list of layers) to its ``shortcut`` (a list, empty for the
identity; a 1x1 strided conv for a projection). The last layer must give (N, classes) scores: the loss is
softmax cross-entropy. Parameters are named ``LAYER.W``, ``LAYER.b``, ``LAYER.gamma``, ... .

Layouts: images (H, N, W, C), as ``nn.conv2d`` computes; ``flatten`` turns them into (N, C * H * W) in
(C, H, W) order, as SystemML's ``nn`` and LeNet do. Shapes are worked out when the network is built: one
that does not fit is a ``ShapeError`` naming the layer and both shapes.
"""
from __future__ import annotations

import copy
from typing import NamedTuple, Sequence

import numpy as np

from . import affine, batch_norm, conv2d, conv2d_pool, dropout, global_avg_pool, max_pool2d, relu, softmax_cross_entropy

STATE_MOMENTUM = 0.1  # batch norm's running statistics move this far towards each step's (PyTorch's rule)


class ShapeError(ValueError):
    """A layer that cannot take its input's shape, or a definition that is not valid."""


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


class Layer:
    """One layer: ``build`` checks the input shape and gives the output's; ``init`` its parameters (local names);
    ``forward(p, x, train, rng)`` -> (out, cache, statistics); ``backward(p, dout, cache)`` -> (dx, grads)."""
    regularized: tuple[str, ...] = ()  # local names of the weights that carry L2
    overwrites = False  # backward takes ``overwrite=True``: it may write dx into dout (the caller's temporary)
    state: tuple[str, ...] = ()  # local names of untrained state (batch norm's running statistics)

    def __init__(self, name: str, options: dict):
        self.name, self.options = name, options

    def config(self) -> dict:
        return {"type": self.kind, "name": self.name, **self.options}

    def fail(self, in_shape, problem: str):
        raise ShapeError(f"layer '{self.name}' ({self.kind}): input {_shape_text(in_shape)}: {problem}")

    def image(self, in_shape) -> tuple[int, int, int]:
        if len(in_shape) != 3:
            self.fail(in_shape, "needs images (C x H x W); it comes after a flatten or a dense layer")
        return in_shape

    def init(self, rng) -> dict[str, np.ndarray]:
        return {}

    def check_init(self, in_shape) -> None:
        if self.options.get("init", "he") not in INITS:
            self.fail(in_shape, f"init must be one of {', '.join(INITS)}, got {self.options['init']!r}")

    def names(self) -> tuple[str, ...]:
        """Local names of this layer's parameters (after ``build``)."""
        return ()

    def param_count(self) -> int:
        return sum(int(np.prod(s)) for s in self.param_shapes().values())

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.init(np.random.default_rng(0)).items()}


INITS = ("he", "lecun")  # the weights' initialisation: normal, std sqrt(2 / fan_in) or sqrt(1 / fan_in)


def _scaled(params: dict, options: dict) -> dict:
    """He-initialised ``params`` rescaled to the layer's ``init`` option (SystemML's LeNet: lecun for its last
    dense layer, written there as He / sqrt(2))."""
    if options.get("init", "he") == "lecun":
        params["W"] /= np.float32(np.sqrt(2.0))
    return params


class _Cache1x1(NamedTuple):
    xs_mat: np.ndarray  # (H'N W', C): the sub-sampled input pixels
    x_shape: tuple  # (H, N, W, C)


class Conv2D(Layer):
    kind = "conv2d"
    regularized = ("W",)

    def build(self, in_shape):
        c, h, w = self.image(in_shape)
        o = self.options
        self.filters, self.kernel = int(o["filters"]), int(o.get("kernel", 3))
        self.stride, self.bias = int(o.get("stride", 1)), bool(o.get("bias", True))
        pad = o.get("padding", 0)
        self.pad = (self.kernel - 1) // 2 if pad == "same" else 0 if pad == "valid" else int(pad)
        if pad == "same" and self.kernel % 2 == 0:
            self.fail(in_shape, f"padding 'same' needs an odd kernel, got {self.kernel}")
        if min(self.filters, self.kernel, self.stride) < 1 or self.pad < 0:
            self.fail(in_shape, "filters, kernel and stride must be >= 1 and padding >= 0")
        h_out = (h + 2 * self.pad - self.kernel) // self.stride + 1
        w_out = (w + 2 * self.pad - self.kernel) // self.stride + 1
        if h_out < 1 or w_out < 1:
            self.fail(in_shape, f"a {self.kernel}x{self.kernel} kernel with padding {self.pad} does not fit")
        self.channels = c
        self.check_init(in_shape)
        return self.filters, h_out, w_out

    def init(self, rng):
        w, b = conv2d.init(self.filters, self.channels, self.kernel, self.kernel, rng)
        return _scaled({"W": w, "b": b} if self.bias else {"W": w}, self.options)

    def names(self):
        return ("W", "b") if self.bias else ("W",)

    def forward(self, p, x, train, rng):
        if self.kernel == 1 and self.pad == 0:  # a 1x1 conv (a projection shortcut): one product, no columns
            xs = x[::self.stride, :, ::self.stride, :]  # (H', N, W', C), sub-sampled
            xs_mat = np.ascontiguousarray(xs).reshape(-1, xs.shape[-1])  # (H'N W', C)
            out = xs_mat @ p["W"][:, :, 0, 0].T  # (H'N W', C) @ (C, F) -> (H'N W', F)
            if self.bias:
                out += p["b"]
            return out.reshape(*xs.shape[:3], self.filters), _Cache1x1(xs_mat, x.shape), {}  # (H', N, W', F)
        b = p["b"] if self.bias else np.zeros(self.filters, x.dtype)
        out, cache = conv2d.forward(x, p["W"], b, self.pad, self.stride)  # (H', N, W', F)
        return out, cache, {}

    def backward(self, p, dout, cache, need_dx=True):
        if isinstance(cache, _Cache1x1):
            xs_mat, x_shape = cache
            dout_mat = dout.reshape(-1, self.filters)  # (H'N W', F)
            dw = (dout_mat.T @ xs_mat)[:, :, None, None]  # (F, H'N W') @ (H'N W', C) -> (F, C, 1, 1)
            dx = None
            if need_dx:  # only the sub-sampled pixels get a gradient
                dxs = (dout_mat @ p["W"][:, :, 0, 0]).reshape(*dout.shape[:3], -1)  # (F) @ (F, C) -> (H', N, W', C)
                if self.stride == 1:
                    dx = dxs
                else:
                    dx = np.zeros(x_shape, dout.dtype)  # (H, N, W, C)
                    dx[::self.stride, :, ::self.stride, :] = dxs
            grads = {"W": dw, "b": dout_mat.sum(axis=0)} if self.bias else {"W": dw}
            return dx, grads
        dx, dw, db = conv2d.backward(dout, cache, need_dx=need_dx, need_db=self.bias)
        return dx, ({"W": dw, "b": db} if self.bias else {"W": dw})


class Dense(Layer):
    kind = "dense"
    regularized = ("W",)

    def build(self, in_shape):
        if len(in_shape) != 1:
            self.fail(in_shape, "needs flat input (N, D): put a flatten or a global average pool before it")
        self.fan_in, self.units, self.bias = in_shape[0], int(self.options["units"]), bool(self.options.get("bias",
                                                                                                         True))
        if self.units < 1:
            self.fail(in_shape, f"units must be >= 1, got {self.units}")
        self.check_init(in_shape)
        return (self.units,)

    def init(self, rng):
        w, b = affine.init(self.fan_in, self.units, rng)
        return _scaled({"W": w, "b": b} if self.bias else {"W": w}, self.options)

    def names(self):
        return ("W", "b") if self.bias else ("W",)

    def forward(self, p, x, train, rng):
        b = p["b"] if self.bias else np.zeros(self.units, x.dtype)
        out, cache = affine.forward(x, p["W"], b)  # (N, D) @ (D, M) -> (N, M)
        return out, cache, {}

    def backward(self, p, dout, cache, need_dx=True):
        dx, dw, db = affine.backward(dout, cache)
        return dx, ({"W": dw, "b": db} if self.bias else {"W": dw})


class BatchNorm(Layer):
    """Over the channels of images, or the features of flat input; running statistics in the STATE slots."""
    kind = "batch_norm"
    state = ("running_mean", "running_var")

    def build(self, in_shape):
        self.channels = in_shape[0]
        return in_shape

    def init(self, rng):
        gamma, beta = batch_norm.init(self.channels)
        return {"gamma": gamma, "beta": beta, "running_mean": np.zeros(self.channels, np.float32),
                "running_var": np.ones(self.channels, np.float32)}

    def names(self):
        return ("gamma", "beta", "running_mean", "running_var")

    def forward(self, p, x, train, rng):
        if train:
            out, cache, (mean, var) = batch_norm.forward(x, p["gamma"], p["beta"])
            m = x.size // self.channels
            stats = {"running_mean": mean, "running_var": var * (m / max(m - 1, 1))}  # unbiased, as PyTorch keeps
            return out, ("train", cache), stats
        out = batch_norm.forward_inference(x, p["gamma"], p["beta"], p["running_mean"], p["running_var"])
        return out, ("inference", x), {}

    def backward(self, p, dout, cache, need_dx=True):
        mode, inner = cache
        if mode == "train":
            dx, dgamma, dbeta = batch_norm.backward(dout, inner)
        else:  # normalised with the running statistics: a per-channel affine map
            dx, dgamma, dbeta = batch_norm.backward_inference(dout, inner, p["gamma"], p["running_mean"],
                                                             p["running_var"])
        return dx, {"gamma": dgamma.astype(dout.dtype), "beta": dbeta.astype(dout.dtype)}


class Activation(Layer):
    """relu, sigmoid or tanh, elementwise."""
    kinds = ("relu", "sigmoid", "tanh")

    def build(self, in_shape):
        self.overwrites = self.kind == "relu"
        return in_shape

    def forward(self, p, x, train, rng):
        if self.kind == "relu":
            out, cache = relu.forward(x)
            return out, cache, {}
        out = 1.0 / (1.0 + np.exp(-x)) if self.kind == "sigmoid" else np.tanh(x)
        return out.astype(x.dtype, copy=False), out, {}

    def backward(self, p, dout, cache, need_dx=True, overwrite=False):
        if self.kind == "relu":
            return relu.backward(dout, cache, overwrite_dout=overwrite), {}
        slope = cache * (1 - cache) if self.kind == "sigmoid" else 1 - cache * cache
        return dout * slope, {}


class Pool(Layer):
    """max_pool or avg_pool over non-overlapping size x size windows."""
    kinds = ("max_pool", "avg_pool")

    def build(self, in_shape):
        c, h, w = self.image(in_shape)
        self.size = int(self.options.get("size", 2))
        if self.size < 1 or h % self.size or w % self.size:
            self.fail(in_shape, f"height and width must be multiples of the pool size {self.size}")
        return c, h // self.size, w // self.size

    def forward(self, p, x, train, rng):
        if self.kind == "max_pool":
            out, cache = max_pool2d.forward(x, self.size)
            return out, cache, {}
        h, n, w, c, s = *x.shape, self.size
        return x.reshape(h // s, s, n, w // s, s, c).mean(axis=(1, 4)), x.shape, {}  # (H/s, N, W/s, C)

    def backward(self, p, dout, cache, need_dx=True):
        if self.kind == "max_pool":
            return max_pool2d.backward(dout, cache), {}
        h, n, w, c, s = *cache, self.size
        dx = np.empty((h // s, s, n, w // s, s, c), dout.dtype)
        dx[...] = (dout / (s * s))[:, None, :, :, None, :]  # each input of a window gets its share
        return dx.reshape(cache), {}


class GlobalAvgPool(Layer):
    kind = "global_avg_pool"

    def build(self, in_shape):
        return (self.image(in_shape)[0],)

    def forward(self, p, x, train, rng):
        out, cache = global_avg_pool.forward(x)  # (H, N, W, C) -> (N, C)
        return out, cache, {}

    def backward(self, p, dout, cache, need_dx=True):
        return global_avg_pool.backward(dout, cache), {}


class Flatten(Layer):
    kind = "flatten"

    def build(self, in_shape):
        return (int(np.prod(in_shape)),)

    def forward(self, p, x, train, rng):
        if x.ndim == 2:
            return x, None, {}
        h, n, w, c = x.shape
        return x.transpose(1, 3, 0, 2).reshape(n, -1), x.shape, {}  # (N, C, H, W) -> (N, C*H*W)

    def backward(self, p, dout, cache, need_dx=True):
        if cache is None:
            return dout, {}
        h, n, w, c = cache
        return np.ascontiguousarray(dout.reshape(n, c, h, w).transpose(2, 0, 3, 1)), {}  # back to (H, N, W, C)


class Dropout(Layer):
    kind = "dropout"

    def build(self, in_shape):
        self.rate = float(self.options["rate"])
        if not 0 <= self.rate < 1:
            self.fail(in_shape, f"rate must be in [0, 1), got {self.rate}")
        return in_shape

    def forward(self, p, x, train, rng):
        if not train or self.rate == 0:
            return x, None, {}
        if rng is None:
            raise ValueError(f"layer '{self.name}' (dropout): training needs a numpy.random.Generator")
        out, mask = dropout.forward(x, 1.0 - self.rate, rng)
        return out, mask, {}

    def backward(self, p, dout, cache, need_dx=True):
        return (dout if cache is None else dropout.backward(dout, cache)), {}


class Residual(Layer):
    """``branch(x) + shortcut(x)``; an empty shortcut is the identity."""
    kind = "residual"

    def __init__(self, name, options, branch: list[Layer], shortcut: list[Layer]):
        super().__init__(name, options)
        self.branch, self.shortcut = branch, shortcut

    def config(self) -> dict:
        return {"type": self.kind, "name": self.name, "branch": [layer.config() for layer in self.branch],
                "shortcut": [layer.config() for layer in self.shortcut]}

    def build(self, in_shape):
        out = _build_chain(self.branch, in_shape)
        short = _build_chain(self.shortcut, in_shape)
        if out != short:
            self.fail(in_shape, f"its branch gives {_shape_text(out)} but its shortcut {_shape_text(short)}")
        return out


class _ConvPool:
    """conv2d (stride 1) -> [relu] -> max_pool, run as ``nn.conv2d_pool`` (convolution and pooling in cache-sized
    bands) with the ReLU after the pool (max and ReLU commute exactly, values and gradients: a quarter of the
    work). The composer applies it wherever the pattern occurs; the layers it stands for keep their names."""

    kind, overwrites = "conv2d_pool", True

    def __init__(self, conv: Conv2D, relu_layer: Layer | None, pool: Pool):
        self.conv, self.relu, self.pool = conv, relu_layer, pool
        self.name = conv.name

    def names(self):
        return self.conv.names()

    def forward(self, p, x, train, rng):
        b = p["b"] if self.conv.bias else np.zeros(self.conv.filters, x.dtype)
        out, cache = conv2d_pool.forward(x, p["W"], b, self.conv.pad, self.pool.size)  # (H'/s, N, W'/s, F)
        relu_cache = None
        if self.relu is not None:
            out, relu_cache = relu.forward(out)
        return out, (cache, relu_cache), {}

    def backward(self, p, dout, cache, need_dx=True, overwrite=False):
        cache, relu_cache = cache
        if relu_cache is not None:
            dout = relu.backward(dout, relu_cache, overwrite_dout=overwrite)
        dx, dw, db = conv2d_pool.backward(dout, cache, need_dx=need_dx)
        return dx, ({"W": dw, "b": db} if self.conv.bias else {"W": dw})


def _plan(layers: Sequence[Layer]) -> list:
    """The layers as they run: conv2d (stride 1) [-> relu] -> max_pool fused into one ``_ConvPool``."""
    plan, i = [], 0
    while i < len(layers):
        layer = layers[i]
        relu_layer = layers[i + 1] if i + 1 < len(layers) and layers[i + 1].kind == "relu" else None
        j = i + (2 if relu_layer else 1)
        pool = layers[j] if j < len(layers) and layers[j].kind == "max_pool" else None
        if isinstance(layer, Conv2D) and layer.stride == 1 and pool is not None:
            plan.append(_ConvPool(layer, relu_layer, pool))
            i = j + 1
        else:
            plan.append(layer)
            i += 1
    return plan


LAYER_TYPES = {cls.kind: cls for cls in (Conv2D, Dense, BatchNorm, GlobalAvgPool, Flatten, Dropout, Residual)}
LAYER_TYPES.update({kind: Activation for kind in Activation.kinds})
LAYER_TYPES.update({kind: Pool for kind in Pool.kinds})


def _build_chain(layers: Sequence[Layer], shape: tuple[int, ...]) -> tuple[int, ...]:
    for layer in layers:
        layer.in_shape = shape
        try:
            shape = layer.out_shape = tuple(int(n) for n in layer.build(shape))
        except ShapeError:
            raise
        except KeyError as e:
            raise ShapeError(f"layer '{layer.name}' ({layer.kind}): option {e.args[0]!r} is missing") from None
        except (TypeError, ValueError) as e:
            raise ShapeError(f"layer '{layer.name}' ({layer.kind}): a bad option value ({e})") from None
    return shape


def _walk(layers: Sequence[Layer]):
    """Every leaf layer, depth first (the order of the parameters)."""
    for layer in layers:
        if isinstance(layer, Residual):
            yield from _walk(layer.branch)
            yield from _walk(layer.shortcut)
        else:
            yield layer


class Network:
    """A ``models.base.Model`` made from a definition (see the module docstring)."""
    STATE_MOMENTUM = STATE_MOMENTUM

    def __init__(self, definition: dict):
        self.definition = copy.deepcopy(definition)
        try:
            shape = tuple(int(n) for n in definition["input_shape"])
            specs = definition["layers"]
        except (KeyError, TypeError, ValueError):
            raise ShapeError("a network definition needs 'input_shape' [C, H, W] and 'layers' [...]") from None
        if len(shape) != 3 or min(shape) < 1:
            raise ShapeError(f"input_shape must be [channels, height, width] >= 1, got {list(shape)}")
        self.input_shape = shape
        counts: dict[str, int] = {}
        self.layers = self._make(specs, counts)
        names = [layer.name for layer in _walk(self.layers)] + [l.name for l in self.layers if isinstance(l, Residual)]
        if len(set(names)) != len(names):
            raise ShapeError(f"layer names must be unique: {sorted(n for n in set(names) if names.count(n) > 1)}")
        out = _build_chain(self.layers, shape)
        if len(out) != 1 or out[0] < 2:
            raise ShapeError(f"the last layer must give class scores (N, classes >= 2), it gives "
                             f"{_shape_text(out)}: end with a dense layer")
        self.classes = out[0]
        self._make_plans()
        leaves = list(_walk(self.layers))
        self.REGULARIZED = tuple(f"{l.name}.{k}" for l in leaves for k in l.regularized)
        self.STATE = tuple(f"{l.name}.{k}" for l in leaves for k in l.state)

    def _make_plans(self) -> None:
        """How each chain of layers runs (``_plan``), by the chain's identity: made again after unpickling (a
        Spark task's copy of the network has new lists)."""
        self._plans, chains = {}, [self.layers]
        while chains:
            chain = chains.pop()
            self._plans[id(chain)] = _plan(chain)
            chains += [c for layer in chain if isinstance(layer, Residual) for c in (layer.branch, layer.shortcut)]

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_plans"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._make_plans()

    def _make(self, specs, counts) -> list[Layer]:
        if not isinstance(specs, list):
            raise ShapeError(f"layers must be a list, got {type(specs).__name__}")
        layers = []
        for spec in specs:
            if not isinstance(spec, dict) or spec.get("type") not in LAYER_TYPES:
                kind = spec.get("type") if isinstance(spec, dict) else spec
                raise ShapeError(f"unknown layer type {kind!r}: one of {', '.join(sorted(LAYER_TYPES))}")
            kind = spec["type"]
            counts[kind] = counts.get(kind, 0) + 1
            name = str(spec.get("name") or f"{kind}_{counts[kind]}")
            options = {k: v for k, v in spec.items() if k not in ("type", "name", "branch", "shortcut")}
            cls = LAYER_TYPES[kind]
            if cls is Residual:
                layer = Residual(name, {}, self._make(spec.get("branch", []), counts),
                                 self._make(spec.get("shortcut", []), counts))
            else:
                layer = cls(name, options)
                layer.kind = kind
            layers.append(layer)
        return layers

    # -- the Model interface -----------------------------------------------------------------------------
    def init_params(self, seed: int) -> dict[str, np.ndarray]:
        """He init for convs and dense layers, biases zero, batch norm at gamma 1, beta 0, running (0, 1);
        float32, in layer order."""
        rng = np.random.default_rng(seed)
        return {f"{layer.name}.{k}": v for layer in _walk(self.layers) for k, v in layer.init(rng).items()}

    def _local(self, params, layer) -> dict[str, np.ndarray]:
        return {k: params[f"{layer.name}.{k}"] for k in layer.names()}

    def _forward(self, params, layers, x, train, rng, caches, stats):
        for layer in self._plans[id(layers)]:
            if isinstance(layer, Residual):
                branch_caches, short_caches = [], []
                out = self._forward(params, layer.branch, x, train, rng, branch_caches, stats)
                short = self._forward(params, layer.shortcut, x, train, rng, short_caches, stats)
                x = out + short
                caches.append((branch_caches, short_caches))
            else:
                x, cache, layer_stats = layer.forward(self._local(params, layer), x, train, rng)
                caches.append(cache)
                stats.update({f"{layer.name}.{k}": v for k, v in layer_stats.items()})
        return x

    def _backward(self, params, layers, dout, caches, grads, need_dx=True, owned=True):
        """dout -> dx through ``layers``. ``owned``: dout is this chain's own temporary, which a ReLU may
        overwrite (not so for a residual's branch while its shortcut still needs the same dout)."""
        plan = self._plans[id(layers)]
        for k, layer, cache in zip(range(len(plan) - 1, -1, -1), reversed(plan), reversed(caches)):
            if isinstance(layer, Residual):
                branch_caches, short_caches = cache
                d_short = self._backward(params, layer.shortcut, dout, short_caches, grads, owned=False)
                # the branch may overwrite dout once the shortcut is done with it and did not pass it through
                branch_owns = owned and not np.may_share_memory(d_short, dout)
                d_branch = self._backward(params, layer.branch, dout, branch_caches, grads, owned=branch_owns)
                if np.may_share_memory(d_branch, dout) and not branch_owns:
                    dout = d_branch + d_short
                else:  # d_branch is a temporary of its own: add in place
                    dout = np.add(d_branch, d_short, out=d_branch)
                owned = True
            else:
                # the network's first layer: no one needs the input's gradient
                extra = {"overwrite": True} if owned and layer.overwrites else {}
                dx, layer_grads = layer.backward(self._local(params, layer), dout, cache, need_dx=need_dx or k > 0,
                                                 **extra)
                owned = owned or (dx is not None and not np.may_share_memory(dx, dout))  # a new temporary
                dout = dx
                grads.update({f"{layer.name}.{k}": v for k, v in layer_grads.items()})
        return dout

    def _scores(self, params, X, train, rng):
        """X (N, C, H, W) -> scores (N, classes), caches, batch statistics."""
        if X.ndim != 4 or X.shape[1:] != self.input_shape:
            raise ValueError(f"the network expects X of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {X.shape}")
        x = np.ascontiguousarray(X.transpose(2, 0, 3, 1))  # (H, N, W, C)
        caches, stats = [], {}
        return self._forward(params, self.layers, x, train, rng, caches, stats), caches, stats

    def loss_and_grads(self, params, X, y, *, train: bool = True, rng: np.random.Generator | None = None,
                       l2: float = 0.0):
        """Mean softmax cross-entropy + ``0.5 * l2 * sum(W**2)`` over REGULARIZED, and its gradients. In
        training mode (batch statistics, dropout) the STATE slots hold the batch's statistics; else zeros."""
        scores, caches, stats = self._scores(params, X, train, rng)
        loss, cache = softmax_cross_entropy.forward(scores, y)
        grads: dict[str, np.ndarray] = {}
        self._backward(params, self.layers, softmax_cross_entropy.backward(1.0, cache), caches, grads, need_dx=False)
        for name in self.STATE:
            grads[name] = stats[name].astype(params[name].dtype) if train else np.zeros_like(params[name])
        grads = {k: np.ascontiguousarray(grads[k], dtype=params[k].dtype) for k in params}  # params' order
        if l2:
            loss += _add_l2(params, grads, self.REGULARIZED, l2)
        return loss, grads

    def predict(self, params, X):
        """X (N, C, H, W) -> class probabilities (N, classes): inference mode."""
        scores, _, _ = self._scores(params, X, False, None)
        return softmax_cross_entropy.softmax(scores)

    # -- description ---------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The definition with every layer named and its options explicit: ``Network(d.to_json())`` rebuilds it."""
        return {"input_shape": list(self.input_shape), "layers": [layer.config() for layer in self.layers]}

    def summary(self) -> str:
        """Each layer, its output shape and parameter count, and the total."""
        rows = [("layer (type)", "output shape", "parameters")]

        def add(layers, indent):
            for layer in layers:
                count = sum(l.param_count() for l in _walk([layer]))
                rows.append((f"{indent}{layer.name} ({layer.kind})", _shape_text(layer.out_shape), f"{count:,}"))
                if isinstance(layer, Residual):
                    add(layer.branch, indent + "  ")
                    if layer.shortcut:
                        rows.append((f"{indent}  + shortcut", "", ""))
                        add(layer.shortcut, indent + "    ")
        rows.append(("input", _shape_text(self.input_shape), ""))
        add(self.layers, "")
        total = sum(l.param_count() for l in _walk(self.layers))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
        return "\n".join(lines + [f"total parameters: {total:,} (untrained state included)"])


def _add_l2(params, grads, names, l2) -> float:
    from ..models.base import add_l2
    return add_l2(params, grads, names, l2)

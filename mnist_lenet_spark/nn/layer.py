"""What layers share: the ``Layer`` base, ``ShapeError``, the registry of layer types, and how a chain of layers is
made, built, initialised and run. Each layer's module holds its math (``forward``, ``backward``) and its class: made
from its options (Keras's config), it never changes; ``build(in_shape)`` gives the output shape. Its parameters live
outside it, as Flax's, in dicts by local name (``W``, ``b``): ``init(in_shape, rng)`` -> params, ``forward(p, x,
train, rng)`` -> (out, cache, statistics), ``backward(p, dout, cache, need_dx, overwrite)`` -> (dx, grads)."""
from __future__ import annotations

from typing import Callable, ClassVar, Iterator, Sequence

import numpy as np


class ShapeError(ValueError):
    """A layer that cannot take its input's shape, or a definition that is not valid."""


def shape_text(shape) -> str:
    return "x".join(map(str, shape))


LAYER_TYPES: dict[str, type[Layer]] = {}  # a definition's ``type``: its layers' class (each class with a ``kind``)
INITS = ("he", "lecun")  # the weights' initialisation: normal, std sqrt(2 / fan_in) or sqrt(1 / fan_in)


class Layer:
    kind: ClassVar[str]  # its definitions' ``type``
    regularized: ClassVar[tuple[str, ...]] = ()  # local names of the weights that carry L2
    state: ClassVar[tuple[str, ...]] = ()  # local names of untrained state (batch norm's running statistics)
    chains: ClassVar[tuple[str, ...]] = ()  # attributes holding chains of layers (a residual block's paths)
    functions: ClassVar[tuple[Callable, Callable]]  # the module's forward(x) and backward(dout, cache), if run as such

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in vars(cls):
            LAYER_TYPES[cls.kind] = cls

    def __init__(self, name: str, options: dict):
        self.name, self.options = name, options

    def config(self) -> dict:
        chains = {chain: [layer.config() for layer in getattr(self, chain)] for chain in self.chains}
        return {"type": self.kind, "name": self.name, **self.options, **chains}

    def refuse(self, problem: str, in_shape=None):
        where = "" if in_shape is None else f"input {shape_text(in_shape)}: "
        raise ShapeError(f"layer '{self.name}' ({self.kind}): {where}{problem}")

    def images(self, in_shape) -> tuple[int, int, int]:  # (C, H, W)
        if len(in_shape) != 3:
            self.refuse("needs images (C x H x W); it comes after a flatten or a dense layer", in_shape)
        return in_shape

    def build(self, in_shape) -> tuple[int, ...]:
        return tuple(in_shape)

    def init(self, in_shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Parameters by local name; a layer holding chains: theirs, by the network's names."""
        return {k: v for chain in self.chains for k, v in init_chain(getattr(self, chain), in_shape, rng).items()}

    def names(self) -> tuple[str, ...]:
        """Local names of this layer's own parameters."""
        return ()

    def walk(self) -> Iterator[Layer]:
        """This layer and every layer inside it, depth first (the order of the parameters)."""
        yield self
        yield from (inner for chain in self.chains for layer in getattr(self, chain) for inner in layer.walk())

    def own(self, params: dict) -> dict:
        """This layer's entries of ``params``, by local name (a layer holding chains: all, for its chains' layers)."""
        return params if self.chains else {k: params[f"{self.name}.{k}"] for k in self.names()}

    def named(self, values: dict) -> dict:
        """Values by local name (parameters, gradients, statistics) -> by the network's names."""
        return values if self.chains else {f"{self.name}.{k}": v for k, v in values.items()}

    def forward(self, p, x, train, rng):
        return (*self.functions[0](x), {})

    def backward(self, p, dout, cache, need_dx=True, overwrite=False):
        return self.functions[1](dout, cache), {}


class Weighted(Layer):
    """Weights ``W`` (with L2) and, unless option ``bias`` is false, a bias ``b``; option ``init`` scales ``W``."""
    regularized = ("W",)

    def __init__(self, name: str, options: dict):
        super().__init__(name, options)
        self.bias, self.scale = bool(options.get("bias", True)), options.get("init", "he")
        if self.scale not in INITS:
            self.refuse(f"init must be one of {', '.join(INITS)}, got {self.scale!r}")

    def names(self):
        return ("W", "b") if self.bias else ("W",)

    def weights(self, w: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        """A module's He-initialised ``w``, ``b`` as parameters (``lecun``: He / sqrt(2), as SystemML's LeNet)."""
        if self.scale == "lecun":
            w /= np.float32(np.sqrt(2.0))
        return {"W": w, "b": b} if self.bias else {"W": w}

    def grads(self, dw: np.ndarray, db: np.ndarray | None) -> dict[str, np.ndarray]:
        return {"W": dw, "b": db} if self.bias else {"W": dw}


class Pool(Layer):
    """Over non-overlapping ``size`` x ``size`` windows (option ``size``, 2)."""

    def __init__(self, name: str, options: dict):
        super().__init__(name, options)
        self.size = int(options.get("size", 2))

    def build(self, in_shape):
        c, h, w = self.images(in_shape)
        if self.size < 1 or h % self.size or w % self.size:
            self.refuse(f"height and width must be multiples of the pool size {self.size}", in_shape)
        return c, h // self.size, w // self.size

    def forward(self, p, x, train, rng):
        return (*self.functions[0](x, self.size), {})


def make_layers(specs, counts: dict[str, int]) -> tuple[Layer, ...]:
    """The layers of definitions ``specs``; one without a ``name`` is named after its type and a count kept in
    ``counts`` across the network (``conv2d_1``)."""
    if not isinstance(specs, list):
        raise ShapeError(f"layers must be a list, got {type(specs).__name__}")
    layers = []
    for spec in specs:
        kind = spec.get("type") if isinstance(spec, dict) else spec
        if not isinstance(spec, dict) or kind not in LAYER_TYPES:
            raise ShapeError(f"unknown layer type {kind!r}: one of {', '.join(sorted(LAYER_TYPES))}")
        cls = LAYER_TYPES[kind]
        counts[kind] = counts.get(kind, 0) + 1
        name = str(spec.get("name") or f"{kind}_{counts[kind]}")
        options = {k: v for k, v in spec.items() if k not in ("type", "name", "branch", "shortcut")}
        options.update({chain: make_layers(spec.get(chain, []), counts) for chain in cls.chains})
        try:
            layers.append(cls(name, options))
        except ShapeError:
            raise
        except KeyError as e:
            raise ShapeError(f"layer '{name}' ({kind}): option {e.args[0]!r} is missing") from None
        except (TypeError, ValueError) as e:
            raise ShapeError(f"layer '{name}' ({kind}): a bad option value ({e})") from None
    return tuple(layers)


def shapes(layers: Sequence[Layer], shape) -> list[tuple[int, ...]]:
    """Each layer's input shape in a chain that takes ``shape``, then the output's (ShapeError: one does not fit)."""
    out = [tuple(shape)]
    for layer in layers:
        out.append(tuple(int(n) for n in layer.build(out[-1])))
    return out


def init_chain(layers: Sequence[Layer], shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fresh parameters of a chain that takes ``shape``, by the network's names, in layer order."""
    return {k: v for layer, s in zip(layers, shapes(layers, shape)) for k, v in layer.named(layer.init(s, rng)).items()}


def forward_chain(ops: Sequence[Layer], params: dict, x: np.ndarray, train: bool, rng):
    """x through a chain -> (out, caches, statistics by the network's names)."""
    caches, stats = [], {}
    for op in ops:
        x, cache, op_stats = op.forward(op.own(params), x, train, rng)
        caches.append(cache)
        stats.update(op.named(op_stats))
    return x, caches, stats


def backward_chain(ops: Sequence[Layer], params: dict, dout: np.ndarray, caches: list, grads: dict,
                   need_dx: bool = True, overwrite: bool = False):
    """dout -> dx through a chain, gradients into ``grads`` by the network's names. ``overwrite``: dout is the chain's
    own temporary (not a residual's branch's while its shortcut needs it), as a layer's new dx is; ``need_dx`` False:
    the first layer skips dx (no one needs the network's input's)."""
    for k, op in reversed(list(enumerate(ops))):
        dx, op_grads = op.backward(op.own(params), dout, caches[k], need_dx=need_dx or k > 0, overwrite=overwrite)
        overwrite = overwrite or (dx is not None and not np.may_share_memory(dx, dout))
        dout = dx
        grads.update(op.named(op_grads))
    return dout

"""A Keras model's architecture (``model.to_json()``: Sequential or functional, Keras 2 or Keras 3) as a network
definition for ``nn.network`` (what SystemML's Keras2DML did for its users). Reads JSON only: Keras is not imported, and
no weights come along (the network trains from its own initialisation). Supported: ``SUPPORTED`` (Conv2D's and Dense's
``activation`` too; pooling with non-overlapping windows; Add of two paths from one tensor, in functional models, as a
residual block). A softmax on the last layer is the loss's own (softmax cross-entropy); anywhere else it is refused.
Anything else is a ``KerasError`` naming the layer and what is not supported.

Layouts: Keras defaults to channels-last, (H, W, C) images; ours are channel-major, (C, H, W). The input shape is turned
around (``data_format`` says which a model uses) and the layers' options keep their meaning; only the order in which
Flatten lists its values differs, which matters to imported weights, and there are none. Batch norm keeps this package's
epsilon (1e-5) and running-statistics momentum (0.1, Keras's 0.9 or 0.99): the definition's options are noted in the
log, not copied."""
from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)


class KerasError(ValueError):
    """A Keras model that uses a layer or an option this package does not have."""


SUPPORTED = ("InputLayer", "Conv2D", "Dense", "BatchNormalization", "Activation", "ReLU", "MaxPooling2D",
             "AveragePooling2D", "GlobalAveragePooling2D", "Flatten", "Dropout", "Add")
ACTIVATIONS = ("relu", "sigmoid", "tanh")


def _pair(value, what: str, layer: str, kind: str) -> int:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(set(values)) != 1:
        raise KerasError(f"layer '{layer}' ({kind}): {what} {values} is not supported (square only)")
    return int(values[0])


class _Converter:
    def __init__(self):
        self.channels_first = False

    def input_shape(self, shape, layer: str) -> list[int]:
        """Keras's (batch, H, W, C) or (batch, C, H, W) -> [C, H, W]."""
        dims = list(shape)[1:] if len(shape) == 4 else list(shape)
        if len(dims) != 3 or any(d is None for d in dims):
            raise KerasError(f"layer '{layer}' (InputLayer): input shape {list(shape)} is not a fixed image shape "
                             f"(height, width, channels)")
        return [int(d) for d in (dims if self.channels_first else (dims[2], dims[0], dims[1]))]

    def layer(self, kind: str, config: dict, last: bool) -> list[dict]:
        """Our layers for one Keras layer (empty for an identity)."""
        name = config.get("name", kind)
        fmt = config.get("data_format")
        if fmt is not None:
            self.channels_first = fmt == "channels_first"

        def refuse(option: str):
            raise KerasError(f"layer '{name}' ({kind}): {option} is not supported")

        def activation(value) -> list[dict]:
            value = value.get("class_name", "").lower() if isinstance(value, dict) else (value or "linear")
            if value == "linear":
                return []
            if value == "softmax":
                if not last:
                    refuse("a softmax before the last layer")
                return []
            if value not in ACTIVATIONS:
                refuse(f"activation {value!r}")
            return [{"type": value, "name": f"{name}_{value}"}]

        if kind == "Conv2D":
            if _pair(config.get("dilation_rate", 1), "dilation_rate", name, kind) != 1:
                refuse(f"dilation_rate {config['dilation_rate']}")
            if int(config.get("groups", 1)) != 1:
                refuse(f"groups {config['groups']}")
            kernel = _pair(config["kernel_size"], "kernel_size", name, kind)
            padding = config.get("padding", "valid")
            if padding == "same" and kernel % 2 == 0:
                refuse(f"padding 'same' with the even kernel {kernel}")
            if padding not in ("same", "valid"):
                refuse(f"padding {padding!r}")
            return [{"type": "conv2d", "name": name, "filters": int(config["filters"]), "kernel": kernel,
                     "stride": _pair(config.get("strides", 1), "strides", name, kind), "padding": padding,
                     "bias": bool(config.get("use_bias", True))}] + activation(config.get("activation"))
        if kind == "Dense":
            return [{"type": "dense", "name": name, "units": int(config["units"]),
                     "bias": bool(config.get("use_bias", True))}] + activation(config.get("activation"))
        if kind == "BatchNormalization":
            axis = config.get("axis", -1)
            axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
            if axis not in (-1, 3, 1) or (axis == 1 and not self.channels_first) or (axis == 3 and self.channels_first):
                refuse(f"axis {config.get('axis')} (only the channels)")
            if not config.get("center", True) or not config.get("scale", True):
                refuse("center or scale off")
            log.info("layer '%s' (BatchNormalization): epsilon %s and momentum %s become this package's 1e-5 and "
                     "0.1 (PyTorch's convention)", name, config.get("epsilon"), config.get("momentum"))
            return [{"type": "batch_norm", "name": name}]
        if kind == "Activation":
            return activation(config.get("activation"))
        if kind == "ReLU":
            if config.get("max_value") is not None or config.get("negative_slope", 0) or config.get("threshold", 0):
                refuse("max_value, negative_slope or threshold")
            return [{"type": "relu", "name": name}]
        if kind in ("MaxPooling2D", "AveragePooling2D"):
            size = _pair(config.get("pool_size", 2), "pool_size", name, kind)
            strides = config.get("strides") or size
            if _pair(strides, "strides", name, kind) != size or config.get("padding", "valid") != "valid":
                refuse("overlapping windows or padding (strides must equal pool_size, padding 'valid')")
            return [{"type": "max_pool" if kind == "MaxPooling2D" else "avg_pool", "name": name, "size": size}]
        if kind == "GlobalAveragePooling2D":
            if config.get("keepdims"):
                refuse("keepdims")
            return [{"type": "global_avg_pool", "name": name}]
        if kind == "Flatten":
            return [{"type": "flatten", "name": name}]
        if kind == "Dropout":
            if config.get("noise_shape") is not None:
                refuse("noise_shape")
            return [{"type": "dropout", "name": name, "rate": float(config["rate"])}]
        raise KerasError(f"layer '{name}' ({kind}): not supported; supported layers: {', '.join(SUPPORTED)}")


def _input_shape_of(layer: dict) -> list | None:
    config = layer.get("config", {})
    return config.get("batch_shape") or config.get("batch_input_shape")


def _inbound(layer: dict) -> list[str]:
    """The names of the layers whose outputs feed ``layer`` (Keras 2: nested lists; Keras 3: keras tensors)."""
    names: list[str] = []

    def walk(value):
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                names.append(value["config"]["keras_history"][0])
                return
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):  # Keras 2 [name, i, j, {}]
                names.append(value[0])
                return
            for v in value:
                walk(v)
    walk(layer.get("inbound_nodes", []))
    return names


def definition_from_keras(text) -> dict:
    """A network definition (``nn.network``) from a Keras model's ``to_json()`` text (or its parsed dict)."""
    try:
        model = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as e:
        raise KerasError(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    kind, config = model.get("class_name"), model.get("config", {})
    layers = config.get("layers")
    if kind not in ("Sequential", "Functional", "Model") or not isinstance(layers, list) or not layers:
        raise KerasError(f"expected a Keras Sequential or functional model's to_json(), got class {kind!r}")
    converter = _Converter()  # the first data format decides how the input shape reads
    formats = (layer.get("config", {}).get("data_format") for layer in layers)
    converter.channels_first = next((fmt for fmt in formats if fmt), None) == "channels_first"
    return (_sequential if kind == "Sequential" else _functional)(converter, layers, config)


def _sequential(converter: _Converter, layers: list[dict], config: dict) -> dict:
    shape = config.get("build_input_shape") or next((_input_shape_of(l) for l in layers if _input_shape_of(l)), None)
    if shape is None:
        raise KerasError("the Sequential model has no input shape: give it a keras.Input or build it first")
    ours = []
    body = [l for l in layers if l.get("class_name") != "InputLayer"]
    for i, layer in enumerate(body):
        ours += converter.layer(layer.get("class_name"), layer.get("config", {}), last=i == len(body) - 1)
    return {"input_shape": converter.input_shape(shape, "input"), "layers": ours}


def _functional(converter: _Converter, layers: list[dict], config: dict) -> dict:
    by_name = {layer.get("name") or layer.get("config", {}).get("name"): layer for layer in layers}
    inputs = [name for name, l in by_name.items() if l.get("class_name") == "InputLayer"]
    if len(inputs) != 1:
        raise KerasError(f"a functional model with {len(inputs)} inputs is not supported (one image input)")
    consumers: dict[str, list[str]] = {name: [] for name in by_name}
    for name, layer in by_name.items():
        for source in dict.fromkeys(_inbound(layer)):
            consumers.setdefault(source, []).append(name)
    outputs = [name for name, c in consumers.items() if not c and by_name[name].get("class_name") != "InputLayer"]
    if len(outputs) != 1:
        raise KerasError(f"a functional model with {len(outputs)} outputs is not supported (one output)")
    input_shape = converter.input_shape(_input_shape_of(by_name[inputs[0]]), inputs[0])

    def layer_of(name: str) -> list[dict]:
        layer = by_name[name]
        return converter.layer(layer.get("class_name"), layer.get("config", {}), last=name == outputs[0])

    def chain(current: str) -> tuple[list[dict], str]:
        """Our layers from ``current``'s output up to (not including) an Add or the model's output; returns them and
        the name of the last layer consumed."""
        ours = []
        while True:
            nexts = consumers.get(current, [])
            if not nexts or (len(nexts) == 1 and by_name[nexts[0]].get("class_name") == "Add"):
                return ours, current
            if len(nexts) == 1:
                ours += layer_of(nexts[0])
                current = nexts[0]
                continue
            if len(nexts) != 2:
                raise KerasError(f"layer '{current}': its output feeds {len(nexts)} layers; only two paths "
                                 f"joined by an Add (a residual block) are supported")
            block, current = _residual(current, nexts)
            ours.append(block)

    def _residual(fork: str, nexts: list[str]) -> tuple[dict, str]:
        paths = []
        for first in nexts:
            if by_name[first].get("class_name") == "Add":  # the identity shortcut
                paths.append(([], first))
                continue
            ours = layer_of(first)  # before its followers: a layer's data_format applies to those after it
            rest, last = chain(first)
            paths.append((ours + rest, consumers[last][0] if consumers.get(last) else None))
        (branch, add_a), (shortcut, add_b) = sorted(paths, key=lambda p: -len(p[0]))
        if add_a is None or add_a != add_b or by_name[add_a].get("class_name") != "Add":
            raise KerasError(f"layer '{fork}': its two paths do not meet in one Add (only residual blocks are "
                             f"supported)")
        if len(_inbound(by_name[add_a])) != 2:
            raise KerasError(f"layer '{add_a}' (Add): adds {len(_inbound(by_name[add_a]))} tensors, not 2")
        return {"type": "residual", "name": add_a, "branch": branch, "shortcut": shortcut}, add_a

    ours, last = chain(inputs[0])
    if last != outputs[0]:
        raise KerasError(f"layer '{last}': the model's graph is not a chain of layers and residual blocks")
    return {"input_shape": input_shape, "layers": ours}

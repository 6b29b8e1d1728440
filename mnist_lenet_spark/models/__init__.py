"""Models trainable by this package: see ``base.Model`` for the interface; ``network_from`` picks one: a preset by name,
or a network composed from the layers (``nn.network``) from its JSON definition."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..data import MNIST_CLASSES, MNIST_SHAPE
from ..nn.layer import shape_text

PRESETS = {"lenet": "lenet", "resnet": "resnet8"}  # preset name: its function in ``definitions``
NAMES = tuple(PRESETS)


def is_definition(spec) -> bool:
    """Whether ``spec`` gives a network's definition (a dict, JSON text, a .json file) rather than a preset's name."""
    return isinstance(spec, dict) or spec.lstrip().startswith("{") or spec.endswith(".json")


def load_definition(spec) -> dict:
    """The definition ``spec`` gives: a dict, JSON text, or the path of a .json file, holding our definition or a
    Keras model's ``to_json()`` (``nn.keras``); ValueError naming the file and the problem."""
    if isinstance(spec, dict):
        return spec
    if spec.lstrip().startswith("{"):
        where, text = "the network definition", spec
    else:
        where = spec
        try:
            text = Path(spec).read_text()
        except OSError as e:
            raise ValueError(f"{spec}: cannot read it ({e.strerror})") from None
    try:
        definition = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(definition, dict):
        raise ValueError(f"{where}: a network definition is a JSON object, got {type(definition).__name__}")
    if "class_name" in definition:  # a Keras model's to_json()
        from ..nn.keras import definition_from_keras
        try:
            return definition_from_keras(definition)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return definition


def network_from(source, input_shape: tuple[int, int, int] | None = None, classes: int | None = None):
    """The network ``source`` gives: a preset's name (one of NAMES, ``definitions``) for (C, H, W) images and
    ``classes`` classes (MNIST's by default), or a definition (``is_definition``: a dict, JSON text, a .json path,
    ours or a Keras model's), whose shapes are its own (given ones must agree). ValueError for an unknown name, a
    bad definition or a shape the network cannot take."""
    from ..nn.network import Network
    if is_definition(source):
        definition = load_definition(source)
        where = source if isinstance(source, str) and source.endswith(".json") else "the network definition"
        try:
            network = Network(definition)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if input_shape is not None and tuple(int(n) for n in input_shape) != network.input_shape:
            raise ValueError(f"{where} takes {shape_text(network.input_shape)} images, not {shape_text(input_shape)}")
        if classes is not None and classes != network.classes:
            raise ValueError(f"{where} gives {network.classes} classes, not {classes}")
        return network
    if source not in NAMES:
        raise ValueError(f"unknown model {source!r}: one of {', '.join(NAMES)}, or a network definition (PATH.json)")
    input_shape = tuple(int(n) for n in (input_shape or MNIST_SHAPE))
    classes = MNIST_CLASSES if classes is None else classes
    if len(input_shape) != 3 or min(input_shape) < 1 or classes < 2:
        raise ValueError(f"image shape must be (channels, height, width) >= 1 and classes >= 2, "
                         f"got {input_shape} and {classes}")
    from . import definitions
    try:
        return Network(getattr(definitions, PRESETS[source])(*input_shape, classes))
    except ValueError as e:  # a shape the preset cannot take: its pools need other sizes
        raise ValueError(f"{source} cannot take {shape_text(input_shape)} images: {e}") from None


def fingerprint(name, model) -> str:
    """What a checkpoint (and MLflow) records of the model: a preset's name, or a hash of a network's definition (so
    that resuming with another network is refused, wherever its file lies)."""
    if isinstance(name, str) and name in NAMES:
        return name
    text = json.dumps(model.to_json(), sort_keys=True)
    return f"network sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]}"

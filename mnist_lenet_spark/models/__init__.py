"""Models trainable by this package: see ``base.Model`` for the interface; ``by_name`` picks one."""
from __future__ import annotations

from ..data import MNIST_CLASSES, MNIST_SHAPE

NAMES = ("lenet", "resnet")


def by_name(name: str, input_shape: tuple[int, int, int] = MNIST_SHAPE, classes: int = MNIST_CLASSES):
    """The model called ``name`` (one of NAMES) for (C, H, W) images and ``classes`` classes (MNIST's by
    default); ValueError for an unknown name or a shape the model cannot take."""
    input_shape = tuple(int(n) for n in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1 or classes < 2:
        raise ValueError(f"image shape must be (channels, height, width) >= 1 and classes >= 2, "
                         f"got {input_shape} and {classes}")
    if name == "lenet":
        from . import lenet
        if (input_shape, classes) != (lenet.input_shape, lenet.classes):
            raise ValueError(f"lenet takes {'x'.join(map(str, lenet.input_shape))} images and {lenet.classes} "
                             f"classes (its layer sizes are MNIST's), got {'x'.join(map(str, input_shape))} and "
                             f"{classes}: use resnet")
        return lenet
    if name == "resnet":
        from .resnet import ResNet
        return ResNet(*input_shape, classes=classes)
    raise ValueError(f"unknown model {name!r}: one of {', '.join(NAMES)}")

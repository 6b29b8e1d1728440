"""Models trainable by this package: see ``base.Model`` for the interface; ``by_name`` picks one."""
from __future__ import annotations

NAMES = ("lenet", "resnet")


def by_name(name: str):
    """The model called ``name`` (one of NAMES) for MNIST's 28 x 28 grey images and 10 classes; ValueError else."""
    if name == "lenet":
        from . import lenet
        return lenet
    if name == "resnet":
        from .resnet import ResNet
        return ResNet()
    raise ValueError(f"unknown model {name!r}: one of {', '.join(NAMES)}")

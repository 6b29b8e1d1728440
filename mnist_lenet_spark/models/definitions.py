"""The two preset networks as definitions for ``nn.network.Network``: SystemML's LeNet and ResNet-8 (the CIFAR
family of He et al. 2016, section 4.2, with n = 1). Each network is defined here once."""
from __future__ import annotations

from ..data import MNIST_CLASSES

#: LeNet's parameters by their names in models saved by version 0.1.0 (its hand-written LeNet)
LENET_LEGACY_NAMES = {"W1": "conv1.W", "b1": "conv1.b", "W2": "conv2.W", "b2": "conv2.b", "W3": "fc1.W",
                      "b3": "fc1.b", "W4": "fc2.W", "b4": "fc2.b"}


def lenet(channels: int = 1, height: int = 28, width: int = 28, classes: int = MNIST_CLASSES) -> dict:
    """SystemML's LeNet (``nn/examples/mnist_lenet.dml``): conv 5x5x32 (pad 2) -> ReLU -> max-pool 2x2 -> conv
    5x5x64 (pad 2) -> ReLU -> max-pool 2x2 -> dense 512 -> ReLU -> dropout 0.5 -> dense ``classes``, on 1 x 28 x 28
    images by default (any height and width that are multiples of 4). He init, the last layer's divided by
    sqrt(2) (LeCun's), as SystemML initialises it; each conv, ReLU and pool runs fused (``nn.plan``)."""
    return {"input_shape": [channels, height, width], "layers": [
        {"type": "conv2d", "name": "conv1", "filters": 32, "kernel": 5, "padding": 2}, {"type": "relu"},
        {"type": "max_pool", "size": 2},
        {"type": "conv2d", "name": "conv2", "filters": 64, "kernel": 5, "padding": 2}, {"type": "relu"},
        {"type": "max_pool", "size": 2},
        {"type": "flatten"}, {"type": "dense", "name": "fc1", "units": 512}, {"type": "relu"},
        {"type": "dropout", "rate": 0.5}, {"type": "dense", "name": "fc2", "units": classes, "init": "lecun"}]}


def legacy_lenet_weights(weights: dict) -> dict:
    """``weights`` with the legacy LeNet names (W1 .. b4) renamed; any other weights unchanged."""
    if set(weights) != set(LENET_LEGACY_NAMES):
        return weights
    return {LENET_LEGACY_NAMES[k]: v for k, v in weights.items()}


def resnet8(channels: int = 1, height: int = 28, width: int = 28, classes: int = MNIST_CLASSES) -> dict:
    """ResNet-8: a 3x3x16 stem, basic blocks of 16, 32 (stride 2) and 64 (stride 2) channels with projection
    shortcuts (1x1 conv, batch norm) where the shape changes, global average pooling, dense. A basic block is
    conv 3x3 (stride s) -> BN -> ReLU -> conv 3x3 -> BN, plus the shortcut, -> ReLU. Convolutions before a batch
    norm have no bias (beta takes its place), as in PyTorch's reference ResNets. Why n = 1: 7 convolutions and
    75 k parameters fit MNIST (28 -> 14 -> 7) and a 2-core machine."""
    def conv_bn(name, filters, kernel, stride):
        return [{"type": "conv2d", "name": name, "filters": filters, "kernel": kernel, "stride": stride,
                 "padding": kernel // 2, "bias": False}, {"type": "batch_norm", "name": f"{name}.bn"}]
    layers = conv_bn("stem", 16, 3, 1) + [{"type": "relu"}]
    for name, cin, cout, stride in (("block1", 16, 16, 1), ("block2", 16, 32, 2), ("block3", 32, 64, 2)):
        branch = conv_bn(f"{name}.conv1", cout, 3, stride) + [{"type": "relu"}] + conv_bn(f"{name}.conv2", cout, 3, 1)
        shortcut = conv_bn(f"{name}.shortcut", cout, 1, stride) if (cin, stride) != (cout, 1) else []
        layers += [{"type": "residual", "name": name, "branch": branch, "shortcut": shortcut}, {"type": "relu"}]
    layers += [{"type": "global_avg_pool"}, {"type": "dense", "name": "fc", "units": classes}]
    return {"input_shape": [channels, height, width], "layers": layers}

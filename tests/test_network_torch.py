"""One composed network that uses every layer kind, and the ResNet-8 preset, against PyTorch autograd in float64:
the loss, every gradient, the batch statistics that ride in the state's gradient slots, and inference with running
statistics. PyTorch's network is interpreted here from the same definition and parameters (its functional layers),
so any difference is ours. The conv -> relu -> max_pool at the start runs fused (``nn.conv2d_pool``) on our side."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnist_lenet_spark.models import definitions
from mnist_lenet_spark.nn import batch_norm
from mnist_lenet_spark.nn.network import Network
from mnist_lenet_spark.nn.residual import Residual
from tests.reference import rel_error

L2 = 1e-3
DROPOUT = 0.25

EVERY_LAYER = {"input_shape": [3, 16, 16], "layers": [
    {"type": "conv2d", "name": "c1", "filters": 6, "kernel": 3, "padding": 1}, {"type": "relu"},
    {"type": "max_pool", "size": 2},  # 6 x 8 x 8
    {"type": "residual", "name": "block1",  # a projection shortcut: 8 x 4 x 4
     "branch": [{"type": "conv2d", "name": "b1c1", "filters": 8, "kernel": 3, "stride": 2, "padding": 1,
                 "bias": False}, {"type": "batch_norm", "name": "b1bn1"}, {"type": "relu"},
                {"type": "conv2d", "name": "b1c2", "filters": 8, "kernel": 3, "padding": "same", "bias": False},
                {"type": "batch_norm", "name": "b1bn2"}],
     "shortcut": [{"type": "conv2d", "name": "b1s", "filters": 8, "kernel": 1, "stride": 2, "bias": False},
                  {"type": "batch_norm", "name": "b1sbn"}]},
    {"type": "sigmoid"},
    {"type": "residual", "name": "block2",  # an identity shortcut
     "branch": [{"type": "conv2d", "name": "b2c", "filters": 8, "kernel": 3, "padding": 1}, {"type": "tanh"}]},
    {"type": "max_pool", "size": 2},  # alone (no conv before it): 8 x 2 x 2
    {"type": "residual", "name": "head",  # two ways to flat features, both 12 wide
     "branch": [{"type": "global_avg_pool"}, {"type": "dense", "name": "hg", "units": 12}],
     "shortcut": [{"type": "avg_pool", "size": 2}, {"type": "flatten"}, {"type": "dense", "name": "hf", "units": 12,
                                                                          "bias": False}]},
    {"type": "batch_norm", "name": "flatbn"}, {"type": "relu"}, {"type": "dropout", "rate": DROPOUT},
    {"type": "dense", "name": "out", "units": 5}]}


NETWORKS = {"every-layer": EVERY_LAYER, "resnet8": definitions.resnet8(3, 12, 10, 4)}  # odd sizes at stride 2


def torch_forward(layers, t: dict, h: torch.Tensor, train: bool, stats: dict, mask: torch.Tensor) -> torch.Tensor:
    """Our layers, run by PyTorch on NCHW tensors; batch norm's batch mean and unbiased variance go in ``stats``
    (what its running statistics take with momentum 1)."""
    for layer in layers:
        p = {k: t[f"{layer.name}.{k}"] for k in layer.names()}
        if isinstance(layer, Residual):
            h = torch_forward(layer.branch, t, h, train, stats, mask) + torch_forward(layer.shortcut, t, h, train,
                                                                                       stats, mask)
        elif layer.kind == "conv2d":  # W (F, C, k, k): PyTorch's layout
            h = F.conv2d(h, p["W"], p.get("b"), stride=layer.stride, padding=layer.pad)
        elif layer.kind == "batch_norm":
            mean, var = p["running_mean"].clone(), p["running_var"].clone()
            h = F.batch_norm(h, mean, var, p["gamma"], p["beta"], training=train, momentum=1.0,
                             eps=batch_norm.EPSILON)
            if train:
                stats[f"{layer.name}.running_mean"], stats[f"{layer.name}.running_var"] = mean, var
        elif layer.kind == "dense":  # W (D, M)
            h = h @ p["W"] + p["b"] if "b" in p else h @ p["W"]
        elif layer.kind in ("relu", "sigmoid", "tanh"):
            h = getattr(torch, layer.kind)(h)
        elif layer.kind == "max_pool":
            h = F.max_pool2d(h, layer.size)
        elif layer.kind == "avg_pool":
            h = F.avg_pool2d(h, layer.size)
        elif layer.kind == "global_avg_pool":
            h = h.mean(dim=(2, 3))
        elif layer.kind == "flatten":
            h = h.flatten(1)  # (N, C*H*W) in (C, H, W) order, as ours
        elif layer.kind == "dropout":
            h = h * mask if train else h
        else:
            raise AssertionError(f"no PyTorch counterpart for {layer.kind}")
    return h


def every_kind(layers):
    for layer in layers:
        yield layer.kind
        if isinstance(layer, Residual):
            yield from every_kind(layer.branch + layer.shortcut)


def with_running_statistics(net: Network, params: dict, rng) -> dict:
    out = dict(params)
    for name in net.STATE:
        shape = params[name].shape
        out[name] = rng.uniform(0.5, 1.5, shape) if name.endswith("var") else rng.normal(0, 0.3, shape)
    return out


def tensors(net: Network, params: dict) -> dict:
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=k not in net.STATE) for k, v in params.items()}


def test_the_network_uses_every_layer_kind():
    from mnist_lenet_spark.nn.network import LAYER_TYPES
    assert set(every_kind(Network(EVERY_LAYER).layers)) == set(LAYER_TYPES)


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("train", [True, False])
def test_loss_every_gradient_and_the_batch_statistics_equal_pytorch_autograd_in_float64(name, train):
    rng = np.random.default_rng(0)
    net = Network(NETWORKS[name])
    params = with_running_statistics(net, {k: v.astype(np.float64) for k, v in net.init_params(1).items()}, rng)
    X, y = rng.uniform(-1, 1, (6, *net.input_shape)), rng.integers(0, net.classes, 6)
    # EVERY_LAYER's one dropout layer draws the only random numbers: the same mask for PyTorch, (N, 12)
    mask = (np.random.default_rng(7).random((6, 12)) < 1 - DROPOUT) / (1 - DROPOUT)

    loss, grads = net.loss_and_grads(params, X, y, train=train, rng=np.random.default_rng(7), l2=L2)

    t, stats = tensors(net, params), {}
    scores = torch_forward(net.layers, t, torch.tensor(X), train, stats, torch.tensor(mask))
    torch_loss = F.cross_entropy(scores, torch.tensor(y)) + 0.5 * L2 * sum((t[k] ** 2).sum() for k in net.REGULARIZED)
    torch_loss.backward()

    assert loss == pytest.approx(torch_loss.item(), rel=1e-12)
    for key, value in params.items():
        if key in net.STATE:  # training: the batch's mean and unbiased variance; inference: zeros
            expected = stats[key].numpy() if train else np.zeros_like(value)
        else:
            expected = t[key].grad.numpy()
        assert grads[key].shape == value.shape, key
        # atol: a bias just before batch norm has a gradient of exactly zero, so both sides are rounding noise
        np.testing.assert_allclose(grads[key], expected, rtol=1e-9, atol=1e-12, err_msg=key)


def test_only_weights_carry_l2():
    assert set(Network(EVERY_LAYER).REGULARIZED) == {f"{n}.W" for n in ("c1", "b1c1", "b1c2", "b1s", "b2c", "hg",
                                                                          "hf", "out")}


@pytest.mark.parametrize("name", NETWORKS)
def test_inference_with_running_statistics_equals_pytorch_in_float64(name):
    rng = np.random.default_rng(3)
    net = Network(NETWORKS[name])
    params = with_running_statistics(net, {k: v.astype(np.float64) for k, v in net.init_params(2).items()}, rng)
    X = rng.uniform(-1, 1, (7, *net.input_shape))
    ours = net.predict(params, X)  # (7, classes)
    with torch.no_grad():
        scores = torch_forward(net.layers, tensors(net, params), torch.tensor(X), False, {}, None)
        theirs = torch.softmax(scores, dim=1).numpy()
    assert rel_error(ours, theirs) < 1e-10

"""The whole ResNet against PyTorch autograd in float64: loss, every gradient, the batch statistics that ride in the
state's gradient slots, and inference with running statistics. The PyTorch network is built here from the same
parameters (its reference layers: Conv2d without bias, BatchNorm2d, Linear), so any difference is ours."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnist_lenet_spark.models.resnet import ResNet
from mnist_lenet_spark.nn import batch_norm
from tests.reference import rel_error

L2 = 5e-4


def torch_tensors(model: ResNet, params: dict) -> dict:
    """Our parameters as float64 leaf tensors that require gradients (running statistics: plain tensors)."""
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=k not in model.STATE) for k, v in params.items()}


def torch_forward(model: ResNet, t: dict, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, dict]:
    """PyTorch's ResNet-8 over X (N, C, H, W) -> scores (N, classes); in training, each batch norm's batch mean
    and unbiased variance (what BatchNorm2d's running statistics take with momentum 1)."""
    stats = {}

    def conv_bn(name, h, stride):
        w = t[f"{name}.W"]  # (F, C, k, k), PyTorch's own layout
        h = F.conv2d(h, w, stride=stride, padding=w.shape[-1] // 2)
        mean, var = t[f"{name}.bn.running_mean"].clone(), t[f"{name}.bn.running_var"].clone()
        out = F.batch_norm(h, mean, var, t[f"{name}.bn.gamma"], t[f"{name}.bn.beta"], training=train,
                           momentum=1.0, eps=batch_norm.EPSILON)
        if train:  # momentum 1: the buffers now hold the batch's mean and unbiased variance
            stats[f"{name}.bn.running_mean"], stats[f"{name}.bn.running_var"] = mean, var
        return out

    a = F.relu(conv_bn("stem", x, 1))
    for name, cin, cout, stride in model.blocks:
        h = F.relu(conv_bn(f"{name}.conv1", a, stride))
        h = conv_bn(f"{name}.conv2", h, 1)
        shortcut = conv_bn(f"{name}.shortcut", a, stride) if stride != 1 or cin != cout else a
        a = F.relu(h + shortcut)
    pooled = a.mean(dim=(2, 3))  # (N, 64)
    return pooled @ t["fc.W"] + t["fc.b"], stats  # (N, 64) @ (64, classes)


def with_running_statistics(model: ResNet, params: dict, rng) -> dict:
    """``params`` with running statistics that are not the initial (0, 1), so inference depends on them."""
    out = dict(params)
    for name in model.STATE:
        shape = params[name].shape
        out[name] = rng.uniform(0.5, 1.5, shape) if name.endswith("var") else rng.normal(0, 0.3, shape)
    return out


@pytest.mark.parametrize("shape,classes,batch", [((1, 28, 28), 10, 4), ((3, 12, 10), 4, 6)])
def test_loss_gradients_and_batch_statistics_equal_pytorch_autograd_in_float64(shape, classes, batch):
    rng = np.random.default_rng(0)
    model = ResNet(*shape, classes=classes)
    params = {k: v.astype(np.float64) for k, v in model.init_params(1).items()}
    params = with_running_statistics(model, params, rng)
    X = rng.uniform(-1, 1, (batch, *shape))
    y = rng.integers(0, classes, batch)

    loss, grads = model.loss_and_grads(params, X, y, train=True, l2=L2)

    t = torch_tensors(model, params)
    scores, stats = torch_forward(model, t, torch.tensor(X), train=True)
    torch_loss = F.cross_entropy(scores, torch.tensor(y)) + 0.5 * L2 * sum(
        (t[name] ** 2).sum() for name in model.REGULARIZED)
    torch_loss.backward()

    assert loss == pytest.approx(torch_loss.item(), rel=1e-12)
    for name, value in params.items():
        if name in model.STATE:  # the batch's mean and unbiased variance, in the state's gradient slots
            expected = stats[name].numpy()
        else:
            expected = t[name].grad.numpy()
        assert grads[name].shape == value.shape, name
        assert rel_error(grads[name], expected) < 1e-9, name


def test_inference_with_running_statistics_equals_pytorch_in_float64():
    rng = np.random.default_rng(3)
    model = ResNet(3, 12, 12, classes=5)
    params = with_running_statistics(model, {k: v.astype(np.float64) for k, v in model.init_params(2).items()}, rng)
    X = rng.uniform(-1, 1, (7, 3, 12, 12))
    ours = model.predict(params, X)  # (7, 5)
    with torch.no_grad():
        scores, _ = torch_forward(model, torch_tensors(model, params), torch.tensor(X), train=False)
        theirs = torch.softmax(scores, dim=1).numpy()
    assert rel_error(ours, theirs) < 1e-10

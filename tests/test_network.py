"""Networks composed from the layers (nn/network.py): gradients against finite differences (float64) for many
small networks drawn at random, shapes worked out at build time, and the JSON definition."""
import json
import re

import numpy as np
import pytest

from mnist_lenet_spark.nn.network import Network, ShapeError


def random_definition(seed: int) -> dict:
    """A small network of random layers, sizes, strides and paddings, with and without residual blocks."""
    rng = np.random.default_rng(seed)
    c, h, w = int(rng.integers(1, 4)), int(rng.integers(5, 10)), int(rng.integers(5, 10))
    definition = {"input_shape": [c, h, w], "layers": []}
    layers = definition["layers"]

    def conv(filters, kernel, stride, padding):
        return {"type": "conv2d", "filters": filters, "kernel": kernel, "stride": stride, "padding": padding,
                "bias": bool(rng.integers(0, 2))}
    for _ in range(int(rng.integers(1, 4))):
        choice = int(rng.integers(0, 3))
        kernel = int(rng.choice([1, 3, 5]))
        if choice == 0 and min(h, w) + 2 >= kernel:  # a conv, batch norm or not, an activation
            stride, pad = int(rng.integers(1, 3)), int(rng.integers(0, kernel // 2 + 1))
            layers.append(conv(int(rng.integers(2, 5)), kernel, stride, pad))
            c, h, w = layers[-1]["filters"], (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
            if rng.integers(0, 2):
                layers.append({"type": "batch_norm"})
            layers.append({"type": str(rng.choice(["relu", "tanh", "sigmoid"]))})
        elif choice == 1:  # a residual block with an identity or a projection shortcut
            stride = int(rng.integers(1, 3))
            out = c if stride == 1 and rng.integers(0, 2) else int(rng.integers(2, 5))
            branch = [conv(out, 3, stride, 1), {"type": "batch_norm"}, {"type": "relu"}, conv(out, 3, 1, 1)]
            shortcut = [] if (out, stride) == (c, 1) else [conv(out, 1, stride, 0), {"type": "batch_norm"}]
            layers += [{"type": "residual", "branch": branch, "shortcut": shortcut}, {"type": "relu"}]
            c, h, w = out, (h - 1) // stride + 1, (w - 1) // stride + 1
        elif h % 2 == 0 and w % 2 == 0:
            layers.append({"type": str(rng.choice(["max_pool", "avg_pool"])), "size": 2})
            h, w = h // 2, w // 2
    if rng.integers(0, 2):
        layers.append({"type": "global_avg_pool"})
    else:
        layers += [{"type": "flatten"}, {"type": "dense", "units": int(rng.integers(3, 7))}, {"type": "relu"},
                   {"type": "dropout", "rate": 0.3}]
    layers.append({"type": "dense", "units": int(rng.integers(2, 5))})
    return definition


def check_gradients(net: Network, train: bool, seed: int, samples: int = 6, eps: float = 1e-6):
    rng = np.random.default_rng(seed)
    params = {k: v.astype(np.float64) for k, v in net.init_params(seed).items()}
    for k in params:  # batch norm away from its initial values, so its gradients are not trivially zero
        if not k.endswith(("running_mean", "running_var")):
            params[k] += rng.normal(0, 0.1, params[k].shape)
        elif k.endswith("running_var"):
            params[k] = rng.uniform(0.5, 2, params[k].shape)
    X = rng.normal(0, 1, (5, *net.input_shape))
    y = rng.integers(0, net.classes, 5)

    def loss(p):  # the same dropout masks at every evaluation
        return net.loss_and_grads(p, X, y, train=train, rng=np.random.default_rng(99), l2=0.01)[0]
    _, grads = net.loss_and_grads(params, X, y, train=train, rng=np.random.default_rng(99), l2=0.01)
    assert set(grads) == set(params)
    for name, value in params.items():
        assert grads[name].shape == value.shape and grads[name].dtype == value.dtype, name
        if name in net.STATE:
            continue
        for i in rng.choice(value.size, min(samples, value.size), replace=False):
            flat = value.reshape(-1)
            keep = flat[i]
            flat[i] = keep + eps
            up = loss(params)
            flat[i] = keep - eps
            down = loss(params)
            flat[i] = keep
            numeric, analytic = (up - down) / (2 * eps), grads[name].reshape(-1)[i]
            assert abs(numeric - analytic) <= 1e-5 * max(1.0, abs(numeric)), (name, i, numeric, analytic)


@pytest.mark.parametrize("seed", range(24))
def test_random_networks_have_the_gradients_of_finite_differences(seed):
    net = Network(random_definition(seed))
    check_gradients(net, train=True, seed=seed)
    check_gradients(net, train=False, seed=seed)  # batch norm on running statistics, no dropout


def test_state_slots_hold_the_batch_statistics_in_training_and_zeros_in_inference():
    net = Network({"input_shape": [2, 4, 4], "layers": [
        {"type": "conv2d", "filters": 3, "kernel": 3, "padding": 1}, {"type": "batch_norm", "name": "bn"},
        {"type": "global_avg_pool"}, {"type": "dense", "units": 2}]})
    assert net.STATE == ("bn.running_mean", "bn.running_var") and net.REGULARIZED == ("conv2d_1.W", "dense_1.W")
    params = net.init_params(0)
    X, y = np.random.default_rng(1).normal(size=(6, 2, 4, 4)).astype(np.float32), np.arange(6) % 2
    _, train = net.loss_and_grads(params, X, y, train=True)
    _, infer = net.loss_and_grads(params, X, y, train=False)
    assert np.all(train["bn.running_var"] > 0) and not np.any(infer["bn.running_var"])
    assert train["conv2d_1.W"].dtype == np.float32


@pytest.mark.parametrize("layers,message", [
    ([{"type": "dense", "units": 4}], "layer 'dense_1' (dense): input 1x8x8: needs flat input"),
    ([{"type": "max_pool", "size": 3}, {"type": "flatten"}, {"type": "dense", "units": 2}],
     "layer 'max_pool_1' (max_pool): input 1x8x8: height and width must be multiples of the pool size 3"),
    ([{"type": "conv2d", "filters": 2, "kernel": 11}, {"type": "flatten"}, {"type": "dense", "units": 2}],
     "layer 'conv2d_1' (conv2d): input 1x8x8: a 11x11 kernel with padding 0 does not fit"),
    ([{"type": "residual", "name": "block", "branch": [{"type": "conv2d", "filters": 4, "kernel": 3,
                                                        "padding": 1}]}, {"type": "flatten"},
      {"type": "dense", "units": 2}],
     "layer 'block' (residual): input 1x8x8: its branch gives 4x8x8 but its shortcut 1x8x8"),
    ([{"type": "flatten"}, {"type": "conv2d", "filters": 2}], "layer 'conv2d_1' (conv2d): input 64: needs images"),
    ([{"type": "conv2d", "filters": 2, "kernel": 1}], "the last layer must give class scores (N, classes >= 2), it "
                                                       "gives 2x8x8"),
    ([{"type": "lstm"}], "unknown layer type 'lstm'"),
    ([{"type": "conv2d", "kernel": 3}], "layer 'conv2d_1' (conv2d): option 'filters' is missing"),
])
def test_shapes_that_do_not_fit_are_one_line_naming_the_layer_and_both_shapes(layers, message):
    with pytest.raises(ShapeError) as e:
        Network({"input_shape": [1, 8, 8], "layers": layers})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_json_definition_rebuilds_the_same_network_and_the_summary_counts_its_parameters():
    net = Network(random_definition(3))
    again = Network(json.loads(json.dumps(net.to_json())))
    assert again.to_json() == net.to_json()
    a, b = net.init_params(5), again.init_params(5)
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    X = np.random.default_rng(0).normal(size=(3, *net.input_shape)).astype(np.float32)
    assert np.array_equal(net.predict(a, X), again.predict(b, X))
    total = sum(v.size for v in a.values())
    assert net.summary().splitlines()[-1] == f"total parameters: {total:,} (untrained state included)"


SMALL_NET = {"input_shape": [1, 28, 28], "layers": [
    {"type": "conv2d", "filters": 4, "kernel": 3, "stride": 2, "padding": 1, "bias": False},
    {"type": "batch_norm"}, {"type": "relu"}, {"type": "avg_pool", "size": 2}, {"type": "flatten"},
    {"type": "dense", "units": 10}]}


def test_a_model_spec_is_a_preset_name_json_text_or_a_json_file(tmp_path):
    from mnist_lenet_spark import models
    path = tmp_path / "net.json"
    path.write_text(json.dumps(SMALL_NET))
    for spec in (str(path), json.dumps(SMALL_NET), SMALL_NET):
        assert models.network_from(spec).to_json() == Network(SMALL_NET).to_json()
    assert models.fingerprint(str(path), models.network_from(str(path))).startswith("network sha256 ")
    assert models.fingerprint("lenet", models.network_from("lenet")) == "lenet"
    (tmp_path / "bad.json").write_text("{nope")
    for spec, message in [(str(tmp_path / "bad.json"), "bad.json: not JSON"),
                          (str(tmp_path / "none.json"), "none.json: cannot read it"),
                          (json.dumps({**SMALL_NET, "layers": SMALL_NET["layers"][:-2] + [{"type": "dense", "units": 3}]}),
                           "layer 'dense_1' (dense): input 4x7x7: needs flat input")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            models.network_from(spec)
    with pytest.raises(ValueError, match="takes 1x28x28 images, not 3x32x32"):
        models.network_from(str(path), (3, 32, 32))


def test_conv_relu_pool_runs_fused_and_a_pickled_network_computes_the_same():
    import pickle
    from mnist_lenet_spark.models import definitions
    from mnist_lenet_spark.nn.conv2d_pool import Conv2DPool
    net = Network(definitions.lenet())
    assert [type(op) for op in net.ops[:2]] == [Conv2DPool, Conv2DPool]
    copy = pickle.loads(pickle.dumps(net))  # as a Spark task receives it
    params = net.init_params(0)
    X, y = np.random.default_rng(0).uniform(-1, 1, (4, 1, 28, 28)).astype(np.float32), np.arange(4)
    a, b = net.loss_and_grads(params, X, y, train=False), copy.loss_and_grads(params, X, y, train=False)
    assert a[0] == b[0] and all(np.array_equal(a[1][k], b[1][k]) for k in params)


def test_layers_do_not_change_when_built_initialised_or_run():
    net = Network(random_definition(5))
    layers = [layer for top in net.layers for layer in top.walk()]
    before = [{k: repr(v) for k, v in vars(layer).items()} for layer in layers]
    params = net.init_params(0)
    net.loss_and_grads(params, np.zeros((2, *net.input_shape), np.float32), np.arange(2) % net.classes,
                       rng=np.random.default_rng(0))
    net.summary()
    assert [{k: repr(v) for k, v in vars(layer).items()} for layer in layers] == before


def test_a_residual_block_runs_its_paths_through_the_planner_and_has_the_gradients_of_finite_differences():
    from mnist_lenet_spark.nn.conv2d_pool import Conv2DPool
    net = Network({"input_shape": [2, 8, 8], "layers": [
        {"type": "residual", "name": "block", "branch": [
            {"type": "conv2d", "filters": 3, "kernel": 3, "padding": 1}, {"type": "relu"}, {"type": "max_pool"}],
         "shortcut": [{"type": "avg_pool"}, {"type": "conv2d", "filters": 3, "kernel": 1, "bias": False}]},
        {"type": "flatten"}, {"type": "dense", "units": 3}]})
    block = net.layers[0]
    assert [type(op) for op in block.ops[0]] == [Conv2DPool] and len(block.ops[1]) == 2
    check_gradients(net, train=True, seed=1)

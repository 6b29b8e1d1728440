"""The LeNet preset (``models.definitions.lenet``): SystemML's shapes and initialisation, gradients against finite
differences, L2, dtypes, prediction, and the legacy weight names."""
import numpy as np
import pytest

from mnist_lenet_spark import data, models
from mnist_lenet_spark.executor import inference
from mnist_lenet_spark.models import base, definitions
from tests.reference import rel_error

lenet = models.network_from("lenet")
SHAPES = {"conv1.W": (32, 1, 5, 5), "conv1.b": (32,), "conv2.W": (64, 32, 5, 5), "conv2.b": (64,),
          "fc1.W": (3136, 512), "fc1.b": (512,), "fc2.W": (512, 10), "fc2.b": (10,)}
BIASES = ("conv1.b", "conv2.b", "fc1.b", "fc2.b")


def test_init_params_shapes_dtype_and_scales():
    p = lenet.init_params(0)
    assert {k: v.shape for k, v in p.items()} == SHAPES
    assert all(v.dtype == np.float32 for v in p.values())
    assert all(not p[b].any() for b in BIASES)
    assert p["conv2.W"].std() == pytest.approx(np.sqrt(2 / 800), rel=0.02)
    assert p["fc1.W"].std() == pytest.approx(np.sqrt(2 / 3136), rel=0.02)
    assert p["fc2.W"].std() == pytest.approx(np.sqrt(2 / 512) / np.sqrt(2), rel=0.1)
    q = lenet.init_params(0)
    assert all(np.array_equal(p[k], q[k]) for k in p)


def small_problem(dtype=np.float64):
    rng = np.random.default_rng(0)
    params = {k: v.astype(dtype) for k, v in lenet.init_params(1).items()}
    for b in BIASES:
        params[b] = rng.standard_normal(params[b].shape).astype(dtype) * 0.1
    X = rng.uniform(-1, 1, (2, 1, 28, 28)).astype(dtype)
    return params, X, np.array([3, 7])


@pytest.mark.parametrize("train", [False, True])
def test_whole_model_gradcheck_float64(train):
    params, X, y = small_problem()
    seed = 5

    def loss():
        rng = np.random.default_rng(seed) if train else None
        return lenet.loss_and_grads(params, X, y, train=train, rng=rng)[0]

    _, grads = lenet.loss_and_grads(params, X, y, train=train, rng=np.random.default_rng(seed) if train else None)
    sample = np.random.default_rng(1)
    for name, p in params.items():
        # check a random subset of each large tensor; every entry of the small ones
        flat = p.reshape(-1)
        picks = sample.choice(flat.size, size=min(flat.size, 20), replace=False)
        for i in picks:
            old = flat[i]
            flat[i] = old + 1e-5
            fp = loss()
            flat[i] = old - 1e-5
            fm = loss()
            flat[i] = old
            numeric = (fp - fm) / 2e-5
            analytic = grads[name].reshape(-1)[i]
            assert abs(numeric - analytic) <= 1e-6 * max(abs(numeric) + abs(analytic), 1e-3), (name, i)


def test_l2_term_in_loss_and_gradient():
    params, X, y = small_problem()
    l0, g0 = lenet.loss_and_grads(params, X, y, train=False, l2=0.0)
    l1, g1 = lenet.loss_and_grads(params, X, y, train=False, l2=0.1)
    expected = 0.05 * sum(np.sum(params[k] ** 2) for k in ("conv1.W", "conv2.W", "fc1.W", "fc2.W"))
    assert l1 - l0 == pytest.approx(expected, rel=1e-10)
    assert np.allclose(g1["fc1.W"] - g0["fc1.W"], 0.1 * params["fc1.W"])
    assert np.array_equal(g1["fc1.b"], g0["fc1.b"])


def test_float32_in_float32_out_and_close_to_float64():
    params, X, y = small_problem(np.float32)
    loss32, g32 = lenet.loss_and_grads(params, X, y, train=False)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    loss64, g64 = lenet.loss_and_grads(p64, X.astype(np.float64), y, train=False)
    assert all(g.dtype == np.float32 for g in g32.values())
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    assert all(rel_error(g32[k], g64[k]) < 1e-4 for k in g32)


def test_predict_is_a_distribution_and_count_correct_counts():
    params = lenet.init_params(1)
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    probs = lenet.predict(params, data.scale_batch(images))
    assert probs.shape == (7, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    predicted = np.argmax(probs, axis=1)
    assert inference.count_correct(lenet, params, images, predicted, chunk=3) == 7  # chunks of 3, 3 and 1
    assert inference.count_correct(lenet, params, images, (predicted + 1) % 10) == 0


def test_train_needs_a_generator_and_shape_is_checked():
    params, X, y = small_problem(np.float32)
    with pytest.raises(ValueError, match="Generator"):
        lenet.loss_and_grads(params, X, y, train=True)
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        lenet.loss_and_grads(params, X[:, :, :27], y, train=False)


def test_flatten_unflatten_round_trip_is_a_view():
    params = lenet.init_params(0)
    spec = base.param_spec(params)
    flat = base.flatten(params, spec)
    assert flat.shape == (sum(v.size for v in params.values()),)
    back = base.unflatten(flat, spec)
    assert all(np.array_equal(back[k], params[k]) for k in params)
    back["fc2.b"][0] = 7.0
    assert flat[-10] == 7.0
    with pytest.raises(ValueError, match="expects"):
        base.unflatten(flat[:-1], spec)


def test_lenet_satisfies_the_model_protocol():
    for name in ("init_params", "loss_and_grads", "predict", "REGULARIZED", "input_shape", "classes"):
        assert hasattr(lenet, name)
    assert lenet.input_shape == (1, 28, 28) and lenet.classes == 10


def test_the_preset_takes_other_shapes_and_refuses_ones_its_pools_cannot():
    net = models.network_from("lenet", (3, 32, 32), 7)
    assert net.init_params(0)["fc1.W"].shape == (64 * 8 * 8, 512) and net.classes == 7
    with pytest.raises(ValueError, match="lenet cannot take 1x30x30 images: layer 'max_pool_2'"):
        models.network_from("lenet", (1, 30, 30))


def test_weights_saved_under_the_legacy_names_are_renamed_and_others_are_not():
    params = lenet.init_params(0)
    legacy = {old: params[new] for old, new in definitions.LENET_LEGACY_NAMES.items()}
    assert definitions.legacy_lenet_weights(legacy).keys() == params.keys()
    other = {"W1": params["conv1.W"]}
    assert definitions.legacy_lenet_weights(other) is other

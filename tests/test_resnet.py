"""The ResNet-8 preset (models/definitions.py): gradients against centred finite differences in float64; batch norm's running
statistics as model state through the trainers: one step by hand, N tasks of B = one process with "ghost"
batches of B, exact resume, and the Spark trainer against the single-process one."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from mnist_lenet_spark import models
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.config import SGDConfig
from mnist_lenet_spark import local
from mnist_lenet_spark.loop import update
from mnist_lenet_spark.models import base
from mnist_lenet_spark.nn.network import STATE_MOMENTUM
from tests.reference import rel_error


def float64(params):
    return {k: v.astype(np.float64) for k, v in params.items()}


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 6, 6)])  # grey and 3-channel; 6 -> 3 -> 2: odd sizes at stride 2
def test_resnet_gradients_match_finite_differences(shape):
    model = models.network_from("resnet", shape, 4)
    rng = np.random.default_rng(21)
    params = float64(model.init_params(3))
    for k in params:  # batch norm away from gamma 1, beta 0, so its gradients are not special
        if k.endswith(("gamma", "beta")):
            params[k] += rng.normal(0, 0.3, params[k].shape)
    X, y = rng.uniform(-1, 1, (3, *shape)), rng.integers(0, 4, 3)
    loss, grads = model.loss_and_grads(params, X, y, train=True, l2=1e-3)
    h = 1e-5
    for name, value in params.items():
        if name in model.STATE:
            continue
        for i in rng.choice(value.size, size=min(value.size, 6), replace=False):
            flat = value.reshape(-1)
            old = flat[i]
            flat[i] = old + h
            up = model.loss_and_grads(params, X, y, train=True, l2=1e-3)[0]
            flat[i] = old - h
            down = model.loss_and_grads(params, X, y, train=True, l2=1e-3)[0]
            flat[i] = old
            numeric, analytic = (up - down) / (2 * h), grads[name].reshape(-1)[i]
            assert abs(numeric - analytic) <= 1e-6 * max(abs(numeric) + abs(analytic), 1e-4), (name, i)


def test_state_slots_carry_the_batch_statistics_and_predict_uses_the_running_ones():
    model = models.network_from("resnet", (1, 8, 8), 3)
    params = float64(model.init_params(0))
    X = np.random.default_rng(1).uniform(-1, 1, (5, 1, 8, 8))
    _, grads = model.loss_and_grads(params, X, np.zeros(5, np.int64), train=True, l2=0.0)
    # the stem's statistics: per filter, the mean and unbiased variance of its conv output over the batch
    from mnist_lenet_spark.nn import conv2d
    h, _ = conv2d.forward(X.transpose(2, 0, 3, 1), params["stem.W"], np.zeros(16), pad=1)  # (8, 5, 8, 16)
    values = h.reshape(-1, 16)  # (8 * 5 * 8, 16)
    np.testing.assert_allclose(grads["stem.bn.running_mean"], values.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(grads["stem.bn.running_var"], values.var(axis=0, ddof=1), rtol=1e-10)
    before = model.predict(params, X)
    params["block3.conv2.bn.running_var"] *= 4
    assert np.max(np.abs(model.predict(params, X) - before)) > 1e-3
    np.testing.assert_allclose(before.sum(axis=1), 1)


def test_one_step_by_hand_equals_the_trainer_with_ghost_batches(mnist):
    """Two mini-batches of 8 in one step: gradient = their mean, running stats = (1 - m) x init + m x their mean."""
    model = models.network_from("resnet")
    images, labels = mnist.train.images[:16], mnist.train.labels[:16]
    config = SGDConfig(batch_size=8, seed=2, max_steps=1, momentum=0.0, l2=0.0)
    result = local.fit_local(images, labels, config, model=model, shards=2, dtype=np.float64)
    spec, state = update.new_state(model, 2)
    params = base.unflatten(state.params.astype(np.float64), spec)
    from mnist_lenet_spark import data
    from mnist_lenet_spark.loop import sharding
    batches = sharding.epoch_batches(16, 2, 8, 2, 0)[0]
    parts = [model.loss_and_grads(params, data.scale_batch(images[b.index], np.float64), labels[b.index],
                                  train=True, l2=0.0)[1] for b in batches]
    lr = config.learning_rate(0, 0, 1)
    for name, value in params.items():
        mean = (parts[0][name] + parts[1][name]) / 2  # equal counts
        expected = (1 - STATE_MOMENTUM) * value + STATE_MOMENTUM * mean if name in model.STATE else value - lr * mean
        np.testing.assert_allclose(result.params[name], expected, rtol=1e-9, atol=1e-12, err_msg=name)


def test_resume_from_state_is_exact(mnist):
    model = models.network_from("resnet")
    images, labels = mnist.train.images[:96], mnist.train.labels[:96]
    config = SGDConfig(batch_size=8, seed=4, max_steps=4)
    whole = local.fit_local(images, labels, config, model=model, shards=2)
    half = local.fit_local(images, labels, SGDConfig(batch_size=8, seed=4, max_steps=2), model=model, shards=2)
    rest = local.fit_local(images, labels, config, model=model, shards=2, state=half.state)
    for k in whole.params:
        np.testing.assert_array_equal(rest.params[k], whole.params[k], err_msg=k)


def test_spark_trainer_equals_ghost_batches_in_one_process(spark, mnist):
    """N = 2 tasks of B = 8 on local[2] = one process whose batch norm normalises each B apart (float64)."""
    model = models.network_from("resnet")
    images, labels = mnist.train.images[:64], mnist.train.labels[:64]
    result = msp.SyncSGD(spark, 2, batch_size=8, seed=5, model=model).fit(images, labels, max_steps=3)
    with threadpool_limits(limits=1):  # as each task computes
        single = local.fit_local(images, labels, SGDConfig(batch_size=8, seed=5, max_steps=3), model=model, shards=2)
    assert [h["loss"] for h in result.history] == pytest.approx([h["loss"] for h in single.history], rel=1e-5)
    for k in single.params:
        assert rel_error(result.params[k], single.params[k]) < 1e-4, k
    assert np.any(result.params["stem.bn.running_mean"] != 0)  # the state moved

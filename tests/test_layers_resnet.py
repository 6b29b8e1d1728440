"""The layers a ResNet adds (batch norm, global average pooling) against centred finite differences (float64)
and against their definitions."""
import numpy as np
import pytest

from mnist_lenet_spark.nn import batch_norm, global_avg_pool
from tests.test_layers import check_layer


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5, 3)])  # (N, C) after an affine layer; HNWC after a conv
def test_batch_norm_gradients(shape):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape) * 2 + 0.5
    gamma, beta = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])

    def forward():
        out, cache, _ = batch_norm.forward(x, gamma, beta)
        return out, cache

    check_layer(forward, [x, gamma, beta], batch_norm.backward, rng)


def test_batch_norm_normalises_each_channel_with_the_batch_statistics():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((5, 8, 5, 3)) * np.array([1.0, 3.0, 0.2]) + np.array([2.0, -1.0, 0.0])  # HNWC
    gamma, beta = batch_norm.init(3)
    out, _, (mean, var) = batch_norm.forward(x.astype(np.float32), gamma, beta)
    assert out.dtype == np.float32
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(var, x.var(axis=(0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.var(axis=(0, 1, 2)), var / (var + batch_norm.EPSILON), rtol=1e-4)
    # inference with the batch's own statistics is the training output
    same = batch_norm.forward_inference(x.astype(np.float32), gamma, beta, mean, var)
    np.testing.assert_allclose(same, out, atol=1e-5)


def test_global_avg_pool_gradients_and_value():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 2, 4, 5))  # (H, N, W, C)
    out, _ = global_avg_pool.forward(x)
    np.testing.assert_allclose(out, x.transpose(1, 3, 0, 2).reshape(2, 5, -1).mean(axis=2))  # NCHW, flattened
    check_layer(lambda: global_avg_pool.forward(x), [x], lambda d, c: (global_avg_pool.backward(d, c),), rng)

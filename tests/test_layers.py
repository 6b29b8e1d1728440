"""Every layer against centred finite differences (float64) and the fast kernels against naive loops."""
import numpy as np
import pytest

from mnist_lenet_spark.nn import (
    affine,
    conv2d,
    conv2d_pool,
    dropout,
    max_pool2d,
    relu,
    softmax_cross_entropy,
)
from tests.reference import (
    conv2d_nchw,
    hnwc_to_nchw,
    max_pool_nchw,
    nchw_to_hnwc,
    numeric_grad,
    rel_error,
)

TOL = 1e-6


def check_layer(forward, inputs, backward, rng):
    """Gradcheck ``sum(out * dout)`` with respect to every array in ``inputs`` (modified in place)."""
    out, cache = forward()
    dout = rng.standard_normal(out.shape)
    analytic = backward(dout, cache)
    for x, dx in zip(inputs, analytic):
        numeric = numeric_grad(lambda: float(np.sum(forward()[0] * dout)), x)
        assert rel_error(dx, numeric) < TOL


@pytest.mark.parametrize("channels,kernel,pad", [(1, 5, 2), (3, 3, 1), (40, 5, 2), (2, 3, 0), (40, 3, 0), (40, 3, 4)])
def test_conv2d_matches_naive_loops(channels, kernel, pad):
    # channels 1 takes the folded (full im2col) path, 40 the per-kernel-row path, which skips
    # padding rows (with pad 4 some output rows see no input row at all: bias only)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, channels, 7, 6))
    w = rng.standard_normal((4, channels, kernel, kernel))
    b = rng.standard_normal(4)
    out, _ = conv2d.forward(nchw_to_hnwc(x), w, b, pad)
    assert rel_error(hnwc_to_nchw(out), conv2d_nchw(x, w, b, pad)) < 1e-12


@pytest.mark.parametrize("kernel,pad", [(5, 2), (3, 0), (3, 1), (3, 4)])
def test_conv2d_by_bands_of_one_row_equals_one_band(monkeypatch, kernel, pad):
    # BAND_BYTES 1: one output row per band, each band's column rows built just before its products
    rng = np.random.default_rng(4)
    x = nchw_to_hnwc(rng.standard_normal((2, 40, 7, 6)))  # 40 channels: the per-kernel-row path
    w, b = rng.standard_normal((4, 40, kernel, kernel)), rng.standard_normal(4)
    monkeypatch.setattr(conv2d, "BAND_BYTES", 1 << 40)
    whole, whole_cache = conv2d.forward(x, w, b, pad)
    monkeypatch.setattr(conv2d, "BAND_BYTES", 1)
    banded, cache = conv2d.forward(x, w, b, pad)
    assert np.array_equal(banded, whole) and np.array_equal(cache.cols, whole_cache.cols)
    assert rel_error(hnwc_to_nchw(banded), conv2d_nchw(hnwc_to_nchw(x), w, b, pad)) < 1e-12
    dout = rng.standard_normal(whole.shape)
    by_rows = conv2d.backward(dout, cache)  # the filter gradient summed band by band, one output row each
    monkeypatch.setattr(conv2d, "BAND_BYTES", 1 << 40)
    for ours, whole_grad in zip(by_rows, conv2d.backward(dout, whole_cache)):
        assert rel_error(ours, whole_grad) < 1e-12


@pytest.mark.parametrize("channels,pad", [(1, 1), (3, 1), (30, 1), (48, 0), (48, 1), (48, 3)])
def test_conv2d_gradients(channels, pad):
    # 48 channels x 3 taps = 144 columns: the per-kernel-row path
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 2, 5, channels))  # (H, N, W, C)
    w = rng.standard_normal((3, channels, 3, 3))
    b = rng.standard_normal(3)
    check_layer(lambda: conv2d.forward(x, w, b, pad), [x, w, b], conv2d.backward, rng)


@pytest.mark.parametrize("channels,kernel,pad,stride,size", [
    (1, 3, 1, 2, (7, 6)), (16, 3, 1, 2, (8, 8)), (48, 3, 1, 2, (7, 7)), (3, 5, 2, 3, (9, 7)), (2, 1, 0, 2, (5, 6)),
    (8, 5, 2, 3, (9, 7)), (16, 2, 0, 2, (7, 8)), (12, 4, 1, 3, (8, 7))])
def test_strided_conv2d_matches_naive_loops(channels, kernel, pad, stride, size):
    # odd and even sizes (the last place may leave input rows unread); from 16 channels (kernel 3) or 8 (kernel 5)
    # on, the per-row path with the rows stored by phase, below it the full im2col; kernel 5 at stride 3 leaves no
    # gap between patches, kernels 1 and 2 leave gaps, kernel 4 at stride 3 overlaps by one
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, channels, *size))
    w = rng.standard_normal((4, channels, kernel, kernel))
    b = rng.standard_normal(4)
    out, _ = conv2d.forward(nchw_to_hnwc(x), w, b, pad, stride)
    assert rel_error(hnwc_to_nchw(out), conv2d_nchw(x, w, b, pad, stride)) < 1e-12


@pytest.mark.parametrize("channels,kernel,pad,stride,size", [
    (1, 3, 1, 2, (5, 6)), (16, 3, 1, 2, (6, 5)), (48, 3, 1, 2, (5, 5)), (2, 5, 2, 3, (7, 6)), (3, 1, 0, 2, (4, 5)),
    (8, 5, 2, 3, (7, 6)), (16, 2, 0, 2, (5, 4)), (12, 4, 1, 3, (8, 7))])
def test_strided_conv2d_gradients(channels, kernel, pad, stride, size):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((size[0], 2, size[1], channels))  # (H, N, W, C)
    w = rng.standard_normal((3, channels, kernel, kernel))
    b = rng.standard_normal(3)
    check_layer(lambda: conv2d.forward(x, w, b, pad, stride), [x, w, b], conv2d.backward, rng)


def test_conv2d_need_dx_false_gives_same_weight_gradients():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 2, 6, 2))
    w = rng.standard_normal((3, 2, 5, 5))
    out, cache = conv2d.forward(x, w, np.zeros(3), 2)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv2d.backward(dout, cache)
    none, dw2, db2 = conv2d.backward(dout, cache, need_dx=False)
    assert none is None and np.array_equal(dw, dw2) and np.array_equal(db, db2)


def test_conv2d_channel_mismatch_is_an_error():
    with pytest.raises(ValueError, match="channels"):
        conv2d.forward(np.zeros((5, 1, 5, 2)), np.zeros((3, 4, 3, 3)), np.zeros(3), 1)


@pytest.mark.parametrize("size", [2, 3])
def test_max_pool_matches_naive_loops(size):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 6))
    out, _ = max_pool2d.forward(nchw_to_hnwc(x), size)
    assert np.array_equal(hnwc_to_nchw(out), max_pool_nchw(x, size))


@pytest.mark.parametrize("size", [2, 3])
def test_max_pool_gradients(size):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 2, 6, 3))  # distinct values: no ties, so the max is differentiable
    check_layer(lambda: max_pool2d.forward(x, size), [x], lambda d, c: (max_pool2d.backward(d, c),), rng)


def test_max_pool_routes_ties_to_one_input():
    x = np.ones((2, 1, 2, 1))
    out, cache = max_pool2d.forward(x)
    dx = max_pool2d.backward(np.ones_like(out), cache)
    assert dx.sum() == 1.0 and dx[0, 0, 0, 0] == 1.0


def test_max_pool_rejects_indivisible_input():
    with pytest.raises(ValueError, match="multiple of the pool size"):
        max_pool2d.forward(np.zeros((5, 1, 4, 1)))


def test_relu_gradients():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 7))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    check_layer(lambda: relu.forward(x), [x], lambda d, c: (relu.backward(d, c),), rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_on_integer_bits_equals_float_max(dtype):
    x = np.random.default_rng(7).standard_normal((6, 9)).astype(dtype)
    x[0, :4] = [-0.0, 0.0, np.inf, -np.inf]
    out, cache = relu.forward(x[:, ::2])  # a strided view too
    assert out.dtype == dtype and np.array_equal(out, np.maximum(x[:, ::2], 0))
    dout = np.ones_like(out)
    dx = relu.backward(dout, cache, overwrite_dout=True)
    assert dx is dout and np.array_equal(dx, (x[:, ::2] > 0).astype(dtype))


def test_affine_gradients():
    rng = np.random.default_rng(6)
    x, w, b = rng.standard_normal((3, 5)), rng.standard_normal((5, 4)), rng.standard_normal(4)
    check_layer(lambda: affine.forward(x, w, b), [x, w, b], affine.backward, rng)


def test_dropout_gradients_and_scaling():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((50, 40))
    check_layer(lambda: dropout.forward(x, 0.5, np.random.default_rng(11)), [x],
                lambda d, c: (dropout.backward(d, c),), rng)
    out, mask = dropout.forward(np.ones((200, 200)), 0.5, np.random.default_rng(0))
    assert set(np.unique(out)) == {0.0, 2.0}
    assert abs(out.mean() - 1.0) < 0.02  # inverted dropout keeps the expectation


def test_dropout_keeps_dtype_and_rejects_bad_keep_prob():
    out, _ = dropout.forward(np.ones((4, 4), np.float32), 0.5, np.random.default_rng(0))
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="keep_prob"):
        dropout.forward(np.ones(3), 0.0, np.random.default_rng(0))


def test_softmax_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(8)
    scores = rng.standard_normal((4, 10))
    y = np.array([0, 3, 9, 3])
    loss, cache = softmax_cross_entropy.forward(scores, y)
    p = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(4), y])), rel=1e-12)
    numeric = numeric_grad(lambda: softmax_cross_entropy.forward(scores, y)[0], scores)
    assert rel_error(softmax_cross_entropy.backward(1.0, cache), numeric) < TOL


def test_softmax_is_stable_for_large_scores():
    probs = softmax_cross_entropy.softmax(np.array([[1000.0, 0.0], [-1000.0, 1000.0]]))
    assert np.all(np.isfinite(probs)) and np.allclose(probs.sum(axis=1), 1)


def test_max_pool_backward_into_out_array():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 2, 4, 3))
    out, cache = max_pool2d.forward(x)
    dout = rng.standard_normal(out.shape)
    buffer = np.full(x.shape, np.nan)
    dx = max_pool2d.backward(dout, cache, out=buffer)
    assert np.shares_memory(dx, buffer) and np.array_equal(buffer, max_pool2d.backward(dout, cache))
    with pytest.raises(ValueError, match="C-contiguous"):
        max_pool2d.backward(dout, cache, out=np.zeros((4, 2, 4, 6))[..., ::2])


@pytest.mark.parametrize("channels,band_bytes", [(1, 1), (48, 1), (48, 1 << 20)])
def test_conv2d_pool_equals_conv_then_pool(monkeypatch, channels, band_bytes):
    # band_bytes 1: one band per pool row (many bands); 1 MiB: a single band
    monkeypatch.setattr(conv2d_pool, "BAND_BYTES", band_bytes)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 3, 8, channels))  # (H, N, W, C)
    w, b = rng.standard_normal((4, channels, 5, 5)), rng.standard_normal(4)
    out, cache = conv2d_pool.forward(x, w, b, 2)
    h, conv_cache = conv2d.forward(x, w, b, 2)
    expected, pool_cache = max_pool2d.forward(h)
    assert rel_error(out, expected) < 1e-12
    dout = rng.standard_normal(out.shape)
    ours = conv2d_pool.backward(dout, cache)
    theirs = conv2d.backward(max_pool2d.backward(dout, pool_cache), conv_cache)
    for a, e in zip(ours, theirs):
        assert rel_error(a, e) < 1e-12
    assert conv2d_pool.backward(dout, cache, need_dx=False)[0] is None


def test_conv2d_pool_gradients(monkeypatch):
    monkeypatch.setattr(conv2d_pool, "BAND_BYTES", 1)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 2, 4, 48))
    w, b = rng.standard_normal((3, 48, 3, 3)), rng.standard_normal(3)
    check_layer(lambda: conv2d_pool.forward(x, w, b, 1), [x, w, b], conv2d_pool.backward, rng)


def test_conv2d_pool_rejects_outputs_the_pool_cannot_tile():
    with pytest.raises(ValueError, match="conv2d_pool: output 5x5"):
        conv2d_pool.forward(np.zeros((5, 1, 5, 1)), np.zeros((2, 1, 3, 3)), np.zeros(2), 1)

"""LeNet as in SystemML's ``nn/examples/mnist_lenet.dml``.

conv 5x5x32 (pad 2) -> ReLU -> max-pool 2x2 -> conv 5x5x64 (pad 2) -> ReLU -> max-pool 2x2
-> affine 3136x512 -> ReLU -> dropout (keep 0.5) -> affine 512x10 -> softmax cross-entropy.

Inputs are NCHW ``(N, 1, 28, 28)`` float32 in [-1, 1]; the conv stack runs in the (H, N, W, C)
layout of ``nn.conv2d`` and flattens in (C, H, W) order before W3, as SystemML does.
"""
from __future__ import annotations

import numpy as np

from ..config import SGDConfig
from ..data import MNIST_CLASSES, MNIST_SHAPE
from ..nn import affine, conv2d, conv2d_pool, dropout, relu, softmax_cross_entropy
from . import base

REGULARIZED = ("W1", "W2", "W3", "W4")
input_shape, classes = MNIST_SHAPE, MNIST_CLASSES  # its affine 3136 -> 512 is sized for MNIST
KEEP_PROB = 0.5


def init_params(seed: int) -> base.Params:
    """He init, biases zero, W4 divided by sqrt(2); float32.

    Shapes: W1 (32,1,5,5) b1 (32,) W2 (64,32,5,5) b2 (64,) W3 (3136,512) b3 (512,)
    W4 (512,10) b4 (10,).
    """
    rng = np.random.default_rng(seed)
    w1, b1 = conv2d.init(32, 1, 5, 5, rng)
    w2, b2 = conv2d.init(64, 32, 5, 5, rng)
    w3, b3 = affine.init(64 * 7 * 7, 512, rng)
    w4, b4 = affine.init(512, 10, rng)
    w4 /= np.float32(np.sqrt(2.0))
    return {"W1": w1, "b1": b1, "W2": w2, "b2": b2, "W3": w3, "b3": b3, "W4": w4, "b4": b4}


def _forward(params, X, train, rng):
    """X (N, 1, 28, 28) -> scores (N, 10) and the caches of every layer."""
    if X.ndim != 4 or X.shape[1:] != (1, 28, 28):
        raise ValueError(f"LeNet expects X of shape (N, 1, 28, 28), got {X.shape}")
    n = X.shape[0]
    x = X.transpose(2, 0, 3, 1)  # (28, N, 28, 1), a view
    # Each conv is fused with its pool (computed in cache-sized bands of rows, see nn/conv2d_pool),
    # and ReLU comes after the pool: max(relu(x)) == relu(max(x)) exactly (values and
    # gradients), at 1/4 of the work.
    p1, c1 = conv2d_pool.forward(x, params["W1"], params["b1"], pad=2)  # conv (28, N, 28, 32) -> (14, N, 14, 32)
    a1, cr1 = relu.forward(p1)
    p2, c2 = conv2d_pool.forward(a1, params["W2"], params["b2"], pad=2)  # conv (14, N, 14, 64) -> (7, N, 7, 64)
    a2, cr2 = relu.forward(p2)
    flat = a2.transpose(1, 3, 0, 2).reshape(n, -1)  # (N, 64, 7, 7) -> (N, 3136), (C, H, W) order
    h3, c3 = affine.forward(flat, params["W3"], params["b3"])  # (N, 512)
    a3, cr3 = relu.forward(h3)
    cd = None
    if train:
        if rng is None:
            raise ValueError("LeNet: train=True needs a numpy.random.Generator for dropout")
        a3, cd = dropout.forward(a3, KEEP_PROB, rng)
    scores, c4 = affine.forward(a3, params["W4"], params["b4"])  # (N, 10)
    return scores, (c1, cr1, c2, cr2, c3, cr3, cd, c4)


def loss_and_grads(params: base.Params, X: np.ndarray, y: np.ndarray, *, train: bool = True,
                   rng: np.random.Generator | None = None, l2: float = SGDConfig.l2) -> tuple[float, base.Params]:
    """Mean softmax cross-entropy over the batch + ``0.5 * l2 * sum(W**2)`` over W1..W4.

    X (N, 1, 28, 28), y (N,) ints. Gradients have the keys, shapes and dtype of ``params``.
    """
    scores, (c1, cr1, c2, cr2, c3, cr3, cd, c4) = _forward(params, X, train, rng)
    loss, cl = softmax_cross_entropy.forward(scores, y)
    n = X.shape[0]

    dscores = softmax_cross_entropy.backward(1.0, cl)  # (N, 10)
    da3, dW4, db4 = affine.backward(dscores, c4)  # (N, 512)
    if cd is not None:
        da3 = dropout.backward(da3, cd)
    dh3 = relu.backward(da3, cr3)
    dflat, dW3, db3 = affine.backward(dh3, c3)  # (N, 3136)
    da2 = dflat.reshape(n, 64, 7, 7).transpose(2, 0, 3, 1)  # back to (7, N, 7, 64)
    dp2 = relu.backward(da2, cr2)
    da1, dW2, db2 = conv2d_pool.backward(dp2, c2)  # (14, N, 14, 32)
    dp1 = relu.backward(da1, cr1)
    _, dW1, db1 = conv2d_pool.backward(dp1, c1, need_dx=False)

    grads = {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2, "W3": dW3, "b3": db3, "W4": dW4, "b4": db4}
    if l2:
        loss += base.add_l2(params, grads, REGULARIZED, l2)
    return loss, grads


def predict(params: base.Params, X: np.ndarray) -> np.ndarray:
    """X (N, 1, 28, 28) -> class probabilities (N, 10), dropout off."""
    scores, _ = _forward(params, X, False, None)
    return softmax_cross_entropy.softmax(scores)

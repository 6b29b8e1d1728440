"""ResNet-8: the CIFAR family of He et al. (2016, section 4.2; 6n + 2 layers) with n = 1, for small images.

conv 3x3x16 -> BN -> ReLU
-> basic block 16 (identity shortcut)
-> basic block 32, stride 2 (projection shortcut: conv 1x1 stride 2 -> BN)
-> basic block 64, stride 2 (projection shortcut)
-> global average pooling -> affine 64 x classes -> softmax cross-entropy.
A basic block: conv 3x3 (stride s) -> BN -> ReLU -> conv 3x3 -> BN, plus the shortcut, -> ReLU.

Why n = 1: 7 convolutions and 75 k parameters fit MNIST (28 x 28: 28 -> 14 -> 7) and a 2-core
machine; its gradient is 0.3 MB against LeNet's 6.6 MB. Convolutions before a batch norm have no
bias (the norm's beta takes its place), as in PyTorch's reference ResNets. Weights: He init; gamma 1,
beta 0; weights (not gamma, beta) carry the L2 penalty.

Batch norm's running mean and variance are model state, not trained: they live in the parameter
vector (so broadcasts, checkpoints and saved models carry them) under names ending in
``.running_mean`` / ``.running_var`` (``STATE``). In training, ``loss_and_grads`` puts this
batch's mean and unbiased variance in their gradient slots; the trainer averages those over the
step's mini-batches weighted by example count (``training.update_state``), then moves the
running values by ``STATE_MOMENTUM`` instead of taking an SGD step (PyTorch's rule, momentum 0.1).

Inputs are NCHW ``(N, C, H, W)``; the layers run in the (H, N, W, C) layout of ``nn.conv2d``.
"""
from __future__ import annotations

import numpy as np

from ..config import SGDConfig
from ..nn import affine, batch_norm, conv2d, global_avg_pool, relu, softmax_cross_entropy
from . import base

STATE_MOMENTUM = 0.1
WIDTHS = (16, 32, 64)  # channels of the stem and of each stage


class ResNet:
    """ResNet-8 for (channels, height, width) images and ``classes`` classes; a ``base.Model``."""
    STATE_MOMENTUM = STATE_MOMENTUM

    def __init__(self, channels: int = 1, height: int = 28, width: int = 28, classes: int = 10):
        self.input_shape, self.classes = (channels, height, width), classes
        self.blocks = [("block1", WIDTHS[0], WIDTHS[0], 1), ("block2", WIDTHS[0], WIDTHS[1], 2),
                       ("block3", WIDTHS[1], WIDTHS[2], 2)]  # (name, in, out channels, stride)
        convs = ["stem"] + [f"{b}.conv{i}" for b, *_ in self.blocks for i in (1, 2)]
        convs += [f"{b}.shortcut" for b, cin, cout, stride in self.blocks if stride != 1 or cin != cout]
        self.REGULARIZED = tuple(f"{c}.W" for c in convs) + ("fc.W",)
        self.STATE = tuple(f"{c}.bn.running_{s}" for c in convs for s in ("mean", "var"))

    def init_params(self, seed: int) -> base.Params:
        """He init for every conv and the affine layer, batch norms at gamma 1, beta 0, running (0, 1); float32."""
        rng = np.random.default_rng(seed)
        params: base.Params = {}

        def conv(name, cin, cout, k):
            params[f"{name}.W"] = conv2d.init(cout, cin, k, k, rng)[0]  # (F, C, k, k)
            params[f"{name}.bn.gamma"], params[f"{name}.bn.beta"] = batch_norm.init(cout)
            params[f"{name}.bn.running_mean"] = np.zeros(cout, np.float32)
            params[f"{name}.bn.running_var"] = np.ones(cout, np.float32)

        conv("stem", self.input_shape[0], WIDTHS[0], 3)
        for name, cin, cout, stride in self.blocks:
            conv(f"{name}.conv1", cin, cout, 3)
            conv(f"{name}.conv2", cout, cout, 3)
            if stride != 1 or cin != cout:
                conv(f"{name}.shortcut", cin, cout, 1)
        params["fc.W"], params["fc.b"] = affine.init(WIDTHS[-1], self.classes, rng)
        return params

    # -- layers ---------------------------------------------------------------------------------------
    def _conv_bn(self, params, name, x, stride, train, stats):
        """conv (3x3 pad 1, or 1x1) with ``stride`` 1 or 2, then batch norm: x (H, N, W, C) -> (H', N, W', F)."""
        w = params[f"{name}.W"]
        zero = np.zeros(w.shape[0], x.dtype)  # no conv bias before a batch norm
        if w.shape[2] == 1:  # 1x1: a matrix product over the (sub-sampled) pixels
            xs = x[::stride, :, ::stride, :]  # (H', N, W', C)
            h = xs.reshape(-1, xs.shape[-1]) @ w[:, :, 0, 0].T  # (H'N W', C) @ (C, F) -> (H'N W', F)
            h = h.reshape(*xs.shape[:3], -1)
            conv_cache = ("1x1", xs, w, stride)
        else:
            h, cols = conv2d.forward(x, w, zero, pad=1, stride=stride)  # (ceil(H/s), N, ceil(W/s), F)
            conv_cache = ("3x3", cols)  # the columns know their stride
        gamma, beta = params[f"{name}.bn.gamma"], params[f"{name}.bn.beta"]
        if train:
            out, bn_cache, (mean, var) = batch_norm.forward(h, gamma, beta)
            m = h.size // h.shape[-1]  # values per channel
            stats[f"{name}.bn.running_mean"] = mean
            stats[f"{name}.bn.running_var"] = var * (m / max(m - 1, 1))  # unbiased, as PyTorch keeps it
        else:
            running = params[f"{name}.bn.running_mean"], params[f"{name}.bn.running_var"]
            out = batch_norm.forward_inference(h, gamma, beta, *running)
            bn_cache = ("inference", h, gamma, *running)  # backward: the per-channel affine map's
        return out, (conv_cache, bn_cache)

    def _conv_bn_backward(self, dout, cache, name, grads, need_dx=True, add_dx_to=None):
        """dout (H', N, W', F) -> dx (H, N, W, C) of a 3x3 conv (None unless need_dx); a 1x1 shortcut adds its dx
        into ``add_dx_to`` instead and returns that."""
        conv_cache, bn_cache = cache
        if isinstance(bn_cache[0], str):  # ("inference", x, gamma, running_mean, running_var)
            dh, grads[f"{name}.bn.gamma"], grads[f"{name}.bn.beta"] = batch_norm.backward_inference(dout, *bn_cache[1:])
        else:
            dh, grads[f"{name}.bn.gamma"], grads[f"{name}.bn.beta"] = batch_norm.backward(dout, bn_cache)
        if conv_cache[0] == "1x1":
            _, xs, w, stride = conv_cache  # (H', N, W', C), (F, C, 1, 1), stride
            dh_mat = dh.reshape(-1, dh.shape[-1])  # (H'N W', F)
            grads[f"{name}.W"] = (dh_mat.T @ xs.reshape(-1, xs.shape[-1]))[:, :, None, None]  # (F, C, 1, 1)
            if add_dx_to is not None:  # only the sub-sampled pixels get a gradient: add it there, no zeros
                # (H'N W', F) @ (F, C) -> (H', N, W', C)
                add_dx_to[::stride, :, ::stride, :] += (dh_mat @ w[:, :, 0, 0]).reshape(xs.shape)
            return add_dx_to
        dx, grads[f"{name}.W"], _ = conv2d.backward(dh, conv_cache[1], need_dx=need_dx)
        return dx

    def _forward(self, params, X, train):
        """X (N, C, H, W) -> scores (N, classes), caches, batch statistics (training)."""
        if X.ndim != 4 or X.shape[1:] != self.input_shape:
            raise ValueError(f"ResNet expects X of shape (N, {', '.join(map(str, self.input_shape))}), got {X.shape}")
        stats: dict[str, np.ndarray] = {}
        x = np.ascontiguousarray(X.transpose(2, 0, 3, 1))  # (H, N, W, C)
        h, c_stem = self._conv_bn(params, "stem", x, 1, train, stats)
        a, r_stem = relu.forward(h)
        caches = [(c_stem, r_stem)]
        for name, cin, cout, stride in self.blocks:
            h1, c1 = self._conv_bn(params, f"{name}.conv1", a, stride, train, stats)
            a1, r1 = relu.forward(h1)
            h2, c2 = self._conv_bn(params, f"{name}.conv2", a1, 1, train, stats)
            if stride != 1 or cin != cout:
                s, cs = self._conv_bn(params, f"{name}.shortcut", a, stride, train, stats)
            else:
                s, cs = a, None
            a, r2 = relu.forward(h2 + s)  # (H', N, W', cout)
            caches.append((c1, r1, c2, cs, r2))
        pooled, c_pool = global_avg_pool.forward(a)  # (N, 64)
        scores, c_fc = affine.forward(pooled, params["fc.W"], params["fc.b"])  # (N, classes)
        return scores, (caches, c_pool, c_fc), stats

    # -- the base.Model interface ---------------------------------------------------------------------
    def loss_and_grads(self, params: base.Params, X: np.ndarray, y: np.ndarray, *, train: bool = True,
                       rng: np.random.Generator | None = None, l2: float = SGDConfig.l2) -> tuple[float, base.Params]:
        """Mean softmax cross-entropy + ``0.5 * l2 * sum(W**2)``; gradients keyed like ``params``, with this
        batch's statistics in the STATE slots when ``train`` (batch norm in training mode), else zeros there.
        No dropout: ``rng`` is accepted and unused."""
        scores, (caches, c_pool, c_fc), stats = self._forward(params, X, train)
        loss, cl = softmax_cross_entropy.forward(scores, y)
        grads: base.Params = {}
        dscores = softmax_cross_entropy.backward(1.0, cl)  # (N, classes)
        dpooled, grads["fc.W"], grads["fc.b"] = affine.backward(dscores, c_fc)  # (N, 64)
        da = global_avg_pool.backward(dpooled, c_pool)  # (H, N, W, 64)
        c_stem, r_stem = caches[0]
        for (name, cin, cout, stride), (c1, r1, c2, cs, r2) in zip(reversed(self.blocks), reversed(caches[1:])):
            # every gradient here is this loop's own temporary: the ReLUs overwrite theirs
            dsum = relu.backward(da, r2, overwrite_dout=True)
            da1 = relu.backward(self._conv_bn_backward(dsum, c2, f"{name}.conv2", grads), r1, overwrite_dout=True)
            da_in = self._conv_bn_backward(da1, c1, f"{name}.conv1", grads)
            if cs is not None:
                self._conv_bn_backward(dsum, cs, f"{name}.shortcut", grads, add_dx_to=da_in)
            else:
                da_in += dsum  # identity shortcut
            da = da_in
        dh = relu.backward(da, r_stem, overwrite_dout=True)
        self._conv_bn_backward(dh, c_stem, "stem", grads, need_dx=False)
        for name in self.STATE:  # the batch's statistics (train) ride in the gradient's slots of the state
            grads[name] = stats[name].astype(params[name].dtype) if train else np.zeros_like(params[name])
        grads = {k: grads[k] for k in params}  # the parameters' order
        if l2:
            loss += base.add_l2(params, grads, self.REGULARIZED, l2)
        return loss, grads

    def predict(self, params: base.Params, X: np.ndarray) -> np.ndarray:
        """X (N, C, H, W) -> class probabilities (N, classes), batch norm with the running statistics."""
        scores, _, _ = self._forward(params, X, False)
        return softmax_cross_entropy.softmax(scores)

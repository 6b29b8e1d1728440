"""Naive loop implementations, for tests only: slow, obvious, NCHW."""
import numpy as np


def conv2d_nchw(x, w, b, pad, stride=1):
    """x (N, C, H, W), w (F, C, HH, WW), b (F,) -> (N, F, Hout, Wout), Hout = (H + 2 pad - HH) // stride + 1."""
    n, c, h, wd = x.shape
    f, _, hh, ww = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    h_out, w_out = (h + 2 * pad - hh) // stride + 1, (wd + 2 * pad - ww) // stride + 1
    out = np.zeros((n, f, h_out, w_out), x.dtype)
    for i in range(n):
        for k in range(f):
            for a in range(h_out):
                for bb in range(w_out):
                    patch = xp[i, :, a * stride:a * stride + hh, bb * stride:bb * stride + ww]
                    out[i, k, a, bb] = np.sum(patch * w[k]) + b[k]
    return out


def max_pool_nchw(x, size):
    """x (N, C, H, W) -> (N, C, H/size, W/size)."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, h // size, w // size), x.dtype)
    for a in range(h // size):
        for bb in range(w // size):
            out[:, :, a, bb] = x[:, :, a * size:(a + 1) * size, bb * size:(bb + 1) * size].max(axis=(2, 3))
    return out


def numeric_grad(f, x, h=1e-5):
    """Centred finite differences of the scalar function f at x (float64), same shape as x."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        grad[i] = (fp - fm) / (2 * h)
    return grad


def rel_error(a, b):
    """max |a - b| / max(|a| + |b|, tiny): one number for a whole array."""
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a) + np.abs(b)), 1e-30))


def nchw_to_hnwc(x):
    return np.ascontiguousarray(x.transpose(2, 0, 3, 1))


def hnwc_to_nchw(x):
    return np.ascontiguousarray(x.transpose(1, 3, 0, 2))

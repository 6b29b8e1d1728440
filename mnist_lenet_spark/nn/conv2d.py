"""2-D convolution, stride 1, zero padding, as matrix products over a column matrix.

Layout. Activations are row-major "HNWC", ``(H, N, W, C)``, not NCHW: with the image row
outermost, the column matrix only needs the ``WW`` horizontal taps of each kernel row
(``WW * C`` columns, 5x smaller than a full im2col), and the ``HH`` kernel rows become ``HH``
matrix products over row-shifted, contiguous slices of that one matrix. Measured on these
machines for LeNet's conv2 this halves the non-GEMM time of a step (see benchmarks/kernel.py).
When ``WW * C`` is small (a first layer on grey images: 5 columns) a product that thin runs
badly, so all kernel rows are folded into the columns instead (the classic full im2col).
Weights keep the project convention ``(F, C, HH, WW)``.

The forward pass caches the column matrix, so the backward pass never builds it again.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided
from scipy.linalg import blas

#: below this many columns per kernel row, fold all kernel rows into one product
MIN_ROW_COLUMNS = 128


def init(num_filters: int, channels: int, height: int, width: int,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """He initialisation.

    Returns
    -------
    W : (F, C, HH, WW) float32, ``randn * sqrt(2 / (C * HH * WW))``
    b : (F,) float32 zeros
    """
    fan_in = channels * height * width
    w = rng.standard_normal((num_filters, channels, height, width)) * np.sqrt(2.0 / fan_in)
    return w.astype(np.float32), np.zeros(num_filters, np.float32)


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int):
    """Convolve.

    Parameters
    ----------
    x : (H, N, W, C) inputs
    w : (F, C, HH, WW) filters
    b : (F,) biases
    pad : zero padding on each side of H and W

    Returns
    -------
    out : (Hout, N, Wout, F) with ``Hout = H + 2 * pad - HH + 1`` (likewise Wout)
    cache : what ``backward`` needs
    """
    h, n, wd, c = x.shape
    f, c_w, hh, ww = w.shape
    if c_w != c:
        raise ValueError(f"conv2d: input has {c} channels, filters expect {c_w}")
    h_out, w_out = h + 2 * pad - hh + 1, wd + 2 * pad - ww + 1
    fold = hh if ww * c < MIN_ROW_COLUMNS else 1  # kernel rows per matrix product
    # Row mode (fold 1) stores no padding rows: a kernel row that falls in the padding adds
    # zeros, so its product simply skips those output rows (LeNet's conv2: 64 of 70 row products).
    pad_h = pad if fold > 1 else 0
    x_pad = np.pad(x, ((pad_h, pad_h), (0, 0), (pad, pad), (0, 0)))  # (H + 2*pad_h, N, Wp, C)
    cols = _im2col(x_pad, fold, ww, w_out)  # (Hc, N, Wout, fold*WW*C), Hc = H + 2*pad_h - fold + 1
    k = fold * ww * c
    w_rows = w.transpose(2, 3, 1, 0).reshape(hh // fold, k, f)  # (HH/fold, K, F)
    out = np.empty((h_out, n, w_out, f), x.dtype)
    out[:] = b
    geometry = (fold, pad_h, pad, h_out, cols.shape[0], hh // fold)
    for g, (lo, hi, shift) in enumerate(_row_ranges(*geometry)):
        rows = cols[lo + shift:hi + shift].reshape(-1, k)  # ((hi-lo)*N*Wout, K), a view
        _matmul_add(rows, w_rows[g], out[lo:hi].reshape(-1, f))  # out rows += (M', K) @ (K, F)
    return out, (cols, w_rows, geometry, x.shape, w.shape)


def backward(dout: np.ndarray, cache, need_dx: bool = True):
    """Gradients of the convolution.

    Parameters
    ----------
    dout : (Hout, N, Wout, F) upstream gradient
    cache : from ``forward``
    need_dx : False skips dx (the first layer of a network has no use for it)

    Returns
    -------
    dx : (H, N, W, C), or None when ``need_dx`` is False
    dw : (F, C, HH, WW)
    db : (F,)
    """
    cols, w_rows, geometry, x_shape, w_shape = cache
    f, c, hh, ww = w_shape
    fold, pad_h, pad = geometry[:3]
    k = fold * ww * c
    dout_mat = dout.reshape(-1, f)  # (M, F), M = Hout*N*Wout
    db = np.ones(dout_mat.shape[0], dout.dtype) @ dout_mat  # (M,) @ (M, F): BLAS, 4x faster than sum(axis=0)
    ranges = _row_ranges(*geometry)
    dw_rows = np.empty((hh // fold, k, f), dout.dtype)  # (HH/fold, K, F)
    for g, (lo, hi, shift) in enumerate(ranges):
        rows = cols[lo + shift:hi + shift].reshape(-1, k)  # (M', K), a view
        np.matmul(rows.T, dout[lo:hi].reshape(-1, f), out=dw_rows[g])  # (K, M') @ (M', F) -> (K, F)
    dw = np.ascontiguousarray(dw_rows.reshape(hh, ww, c, f).transpose(3, 2, 0, 1))  # (F, C, HH, WW)
    if not need_dx:
        return None, dw, db
    dcols = np.zeros(cols.shape, dout.dtype)  # (Hc, N, Wout, K)
    for g, (lo, hi, shift) in enumerate(ranges):
        target = dcols[lo + shift:hi + shift].reshape(-1, k)  # (M', K), a view
        # target += (M', F) @ (F, K)
        _matmul_add(dout[lo:hi].reshape(-1, f), np.ascontiguousarray(w_rows[g].T), target)
    return _col2im(dcols, fold, x_shape, ww, pad_h, pad), dw, db


def _row_ranges(fold: int, pad_h: int, pad: int, h_out: int, hc: int, groups: int) -> list[tuple[int, int, int]]:
    """For each kernel-row group g: the output rows [lo, hi) it touches and the shift to its column rows.

    Output row i reads column row ``i + shift``, ``shift = g*fold + pad_h - pad``; column rows
    outside 0..Hc-1 are padding rows, which are not stored and add nothing.
    """
    ranges = []
    for g in range(groups):
        shift = g * fold + pad_h - pad
        lo, hi = max(0, -shift), min(h_out, hc - shift)
        ranges.append((lo, max(lo, hi), shift))
    return ranges


def _matmul_add(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out += a @ b in one BLAS call (beta = 1), with no temporary and no extra pass over ``out``.

    BLAS is column-major: for C-contiguous arrays, out.T += b.T @ a.T is the same product on
    Fortran-contiguous views, so nothing is copied. Anything else takes the plain NumPy path.
    """
    if (out.dtype in (np.float32, np.float64) and a.dtype == b.dtype == out.dtype
            and a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous):
        gemm = blas.sgemm if out.dtype == np.float32 else blas.dgemm
        gemm(1.0, b.T, a.T, beta=1.0, c=out.T, overwrite_c=1)
    else:
        out += a @ b


def _im2col(x_pad: np.ndarray, fold: int, ww: int, w_out: int) -> np.ndarray:
    """(Hp, N, Wp, C) -> (Hc, N, Wout, fold*WW*C), Hc = Hp - fold + 1: the ``fold`` x ``WW`` patch at each place."""
    hp, n, _, c = x_pad.shape
    s_h, s_n, s_w, s_c = x_pad.strides
    windows = as_strided(x_pad, shape=(hp - fold + 1, n, w_out, fold, ww, c),
                         strides=(s_h, s_n, s_w, s_h, s_w, s_c), writeable=False)
    # An explicit copy: with fold == 1 a reshape alone would return an overlapping view, and
    # every product would then copy its rows again.
    return np.ascontiguousarray(windows).reshape(hp - fold + 1, n, w_out, fold * ww * c)


def _col2im(dcols: np.ndarray, fold: int, x_shape, ww: int, pad_h: int, pad: int) -> np.ndarray:
    """Scatter-add (Hc, N, Wout, fold*WW*C) column gradients back to (H, N, W, C).

    The column rows cover the input padded by ``pad_h`` rows and ``pad`` columns on each side.

    Places (a, b) with the same (a mod fold, b mod WW) have patches that do not overlap, so
    each class is one vectorised ``+=`` with inner runs of WW*C contiguous values.
    """
    h, n, wd, c = x_shape
    hc, _, w_out, _ = dcols.shape
    dcols6 = dcols.reshape(hc, n, w_out, fold, ww, c)
    dx_pad = np.zeros((h + 2 * pad_h, n, wd + 2 * pad, c), dcols.dtype)  # (H + 2*pad_h, N, Wp, C)
    for qa in range(fold):
        ka = len(range(qa, hc, fold))  # patches starting at rows qa, qa+fold, ...
        for qb in range(ww):
            kb = len(range(qb, w_out, ww))
            block = dx_pad[qa:qa + ka * fold, :, qb:qb + kb * ww, :]  # a view
            block = block.reshape(ka, fold, n, kb, ww, c).transpose(0, 2, 3, 1, 4, 5)  # (ka, N, kb, fold, WW, C)
            block += dcols6[qa::fold, :, qb::ww]  # (ka, N, kb, fold, WW, C)
    return np.ascontiguousarray(dx_pad[pad_h:pad_h + h, :, pad:pad + wd, :])

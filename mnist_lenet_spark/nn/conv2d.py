"""2-D convolution, zero padding, stride 1 or more, as matrix products over a column matrix.

Layout. Activations are row-major "HNWC", ``(H, N, W, C)``, not NCHW: with the image row outermost, the column
matrix only needs the ``WW`` horizontal taps of each kernel row (``WW * C`` columns, 5x smaller than a full im2col),
and the ``HH`` kernel rows become ``HH`` matrix products over row-shifted, contiguous slices of that one matrix (for
LeNet's conv2 this halves the non-GEMM time of a step here, benchmarks/kernel.py). When ``WW * C`` is small (a first
layer on grey images: 5 columns) a product that thin runs badly, so all kernel rows are folded into the columns
instead (the classic full im2col). A stride s above 1 builds columns at the strided places only (a ResNet's
downsampling convolutions: 4x fewer products and columns than stride 1 and dropping three outputs in four). In row
mode it stores the column rows of input rows 0, s, 2s, ... first, then 1, s + 1, ..., and so on ("phases"): kernel
row g of output row a reads input row s*a + g - pad, so each kernel row's product still reads one contiguous slice.
Weights keep the project convention ``(F, C, HH, WW)``.

The forward pass caches the column matrix, so the backward pass never builds it again. Its pieces (``columns``,
``output_rows``, ``add_weight_grads``, ``input_grad``) work on any band of output rows, which ``conv2d_pool`` uses to
pool each band while it is still in cache."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided
from scipy.linalg import blas

from .layer import Weighted

#: below this many columns per kernel row, fold all kernel rows into one product. Measured here (one thread,
#: batch 64, 3x3 stride 1): at 48 columns (16 channels) row mode takes 0.55x the forward time and 0.65x the
#: backward's of folding, at 96 (32 channels) 0.65x and 0.7x; at 5 (LeNet's grey first layer) it runs badly.
MIN_ROW_COLUMNS = 32
#: target size of the column rows one band of output rows reads, forward (see ``_RowBuilder``) and for the filter
#: gradient. Measured here (one thread, batch 64, whole steps, against one band): building columns a band ahead,
#: a VGG's step 0.95x at 1 to 4 MiB, ResNet-8's 1.015x at 1 MiB (more, smaller products) and 1.004x at 4 MiB,
#: LeNet's unchanged; the filter gradient by 4 MiB bands, ResNet-8's 0.974x, the VGG's 0.98x.
BAND_BYTES = 4 * 1024 * 1024


def init(num_filters: int, channels: int, height: int, width: int, rng: np.random.Generator):
    """He initialisation: W (F, C, HH, WW) float32 ``randn * sqrt(2 / (C * HH * WW))``, b (F,) float32 zeros."""
    fan_in = channels * height * width
    w = rng.standard_normal((num_filters, channels, height, width)) * np.sqrt(2.0 / fan_in)
    return w.astype(np.float32), np.zeros(num_filters, np.float32)


class Columns(NamedTuple):
    """The forward pass's column matrix and geometry: the cache of ``forward``."""
    cols: np.ndarray  # (Hc, N, Wout, K), K = fold*WW*C
    w_rows: np.ndarray  # (HH/fold, K, F)
    fold: int  # kernel rows per matrix product: HH (full im2col) or 1 (row mode)
    pad_h: int  # padding rows stored in ``cols`` (0 in row mode)
    pad: int
    out_shape: tuple[int, int, int, int]  # (Hout, N, Wout, F)
    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    stride: int = 1
    phases: int = 1  # row mode with stride s: s (the column rows are stored phase by phase); else 1

    def row_ranges(self, lo: int, hi: int):
        """For each kernel-row group g touching output rows [lo, hi): (g, first, end, shift). Output row i reads
        column row ``i + shift``: ``shift = g*fold + pad_h - pad`` with one phase; with s phases, kernel row g reads
        input row s*i + g - pad, which is row i + (g - pad) // s of phase (g - pad) % s. Column rows outside the
        stored ones (or outside the phase) are padding rows: not stored, they add nothing."""
        for g in range(len(self.w_rows)):
            if self.phases == 1:
                shift, stored_lo, stored_hi = g * self.fold + self.pad_h - self.pad, 0, self.cols.shape[0]
            else:
                start, length = _phase_rows(self.x_shape[0], self.phases, (g - self.pad) % self.phases)
                shift, stored_lo, stored_hi = start + (g - self.pad) // self.phases, start, start + length
            first, end = max(lo, stored_lo - shift), min(hi, stored_hi - shift)
            if first < end:
                yield g, first, end, shift


def _phase_rows(h: int, s: int, phase: int) -> tuple[int, int]:
    """Where phase ``phase`` of ``h`` rows split into ``s`` phases (rows phase, phase + s, ...) starts among the
    stored column rows, and how many rows it has."""
    return sum(len(range(p, h, s)) for p in range(phase)), len(range(phase, h, s))


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pad: int, stride: int = 1):
    """Convolve inputs x (H, N, W, C) with filters w (F, C, HH, WW) and biases b (F,) or None, ``pad`` zeros on each
    side of H and W, output places ``stride`` apart on both axes -> out (Hout, N, Wout, F) with
    ``Hout = (H + 2 * pad - HH) // stride + 1`` (likewise Wout), cache (a ``Columns``: what ``backward`` needs)."""
    cache, builder = columns(x, w, pad, stride)
    h_out = cache.out_shape[0]
    out = np.empty(cache.out_shape, x.dtype)
    band = _band_rows(cache, x.dtype.itemsize)
    for lo in range(0, h_out, band):
        hi = min(lo + band, h_out)
        builder.for_outputs(hi)
        output_rows(cache, b, lo, hi, out[lo:hi])
    builder.finish()
    return out, cache


def _band_rows(cache: Columns, itemsize: int) -> int:
    """Output rows per band: as many as read about BAND_BYTES of column rows."""
    _, n, w_out, _ = cache.out_shape
    return max(1, BAND_BYTES // (n * w_out * cache.w_rows.shape[1] * itemsize))


class _RowBuilder:
    """Builds row mode's column matrix a band ahead of the products that read it, so that they read rows that are
    still in cache: here a product over a whole 25 MB column matrix runs at ~60 GFLOP/s, over a few MB of cached
    rows at ~90. Without ``x_pad``, ``cols`` is complete already (full im2col, or strided row mode)."""

    def __init__(self, cols: np.ndarray, x_pad: np.ndarray | None = None, ww: int = 0, last_shift: int = 0):
        self.x_pad, self.cols, self.ww, self.last_shift = x_pad, cols, ww, last_shift
        self.done = 0 if x_pad is not None else len(cols)  # column rows built

    def for_outputs(self, hi: int) -> None:
        """Build every column row that output rows below ``hi`` read."""
        end = min(hi + self.last_shift, len(self.cols))
        if end > self.done:
            rows = self.cols[self.done:end]  # (R, N, Wout, WW*C)
            windows = _windows(self.x_pad[self.done:end], 1, self.ww, rows.shape[2])  # (R, N, Wout, 1, WW, C)
            np.copyto(rows.reshape(windows.shape), windows)
            self.done = end

    def finish(self) -> None:
        self.for_outputs(len(self.cols))


def columns(x: np.ndarray, w: np.ndarray, pad: int, stride: int = 1):
    """The column matrix of x (H, N, W, C) for filters w (F, C, HH, WW): (cache, builder). A row-mode matrix is
    built on demand: ``builder.for_outputs(hi)`` before computing output rows below ``hi``, ``builder.finish()``
    before the backward pass."""
    h, n, wd, c = x.shape
    f, c_w, hh, ww = w.shape
    if c_w != c:
        raise ValueError(f"conv2d: input has {c} channels, filters expect {c_w}")
    h_out, w_out = (h + 2 * pad - hh) // stride + 1, (wd + 2 * pad - ww) // stride + 1
    fold = hh if ww * c < MIN_ROW_COLUMNS else 1
    # Row mode (fold 1) stores no padding rows: a kernel row that falls in the padding adds
    # zeros, so its product simply skips those output rows (LeNet's conv2: 64 of 70 row products).
    pad_h = pad if fold > 1 else 0
    x_pad = np.pad(x, ((pad_h, pad_h), (0, 0), (pad, pad), (0, 0)))  # (H + 2*pad_h, N, Wp, C)
    w_rows = w.transpose(2, 3, 1, 0).reshape(hh // fold, fold * ww * c, f)  # (HH/fold, K, F)
    builder = None
    if fold == 1 and stride == 1:
        cols = np.empty((h, n, w_out, ww * c), x.dtype)  # (H, N, Wout, WW*C), built by the builder
        builder = _RowBuilder(cols, x_pad, ww, hh - 1 - pad)  # output row i reads column rows up to i + HH-1-pad
    elif fold == 1:  # row mode, stride s > 1: the column rows of input rows ph, ph + s, ... for each phase ph
        windows = _windows(x_pad, 1, ww, w_out, 1, stride)  # (H, N, Wout, 1, WW, C): every row, places s apart
        cols = np.concatenate([windows[p::stride] for p in range(stride)]).reshape(h, n, w_out, ww * c)
    elif c == 1 and stride == 1:
        cols = _tap_major_columns(x_pad[..., 0], hh, ww, h_out, w_out)  # (Hout, N, Wout, HH*WW)
    else:
        cols = _im2col(x_pad, fold, ww, w_out, stride)  # (Hc, N, Wout, fold*WW*C)
    phases = stride if fold == 1 else 1
    cache = Columns(cols, w_rows, fold, pad_h, pad, (h_out, n, w_out, f), x.shape, w.shape, stride, phases)
    return cache, builder or _RowBuilder(cols)


def output_rows(cache: Columns, b: np.ndarray | None, lo: int, hi: int, out: np.ndarray) -> None:
    """Write output rows [lo, hi) of the convolution into ``out`` (hi - lo, N, Wout, F)."""
    f = cache.w_rows.shape[2]
    ranges = list(cache.row_ranges(lo, hi))
    # Without a bias, a group that reaches every output row (the centre kernel row; the one group of a full
    # im2col) goes first and writes instead of adding, which spares filling ``out`` with zeros (a pass over it).
    covering = next((r for r in ranges if r[1] == lo and r[2] == hi), None) if b is None or not b.any() else None
    if covering:
        ranges.remove(covering)
        ranges.insert(0, covering)
    else:
        out[:] = 0 if b is None else b
    for i, (g, first, end, shift) in enumerate(ranges):
        rows = _row_matrix(cache.cols, first + shift, end + shift)  # (M', K), a view
        # += (M', K) @ (K, F); = for the covering group
        _matmul_add(rows, cache.w_rows[g], out[first - lo:end - lo].reshape(-1, f), add=not (covering and i == 0))


def add_weight_grads(cache: Columns, dout: np.ndarray, lo: int, hi: int, dw_rows: np.ndarray) -> None:
    """dw_rows (HH/fold, K, F) += the filter gradient from output rows [lo, hi), dout (hi - lo, N, Wout, F)."""
    f = cache.w_rows.shape[2]
    for g, first, end, shift in cache.row_ranges(lo, hi):
        rows = _row_matrix(cache.cols, first + shift, end + shift)  # (M', K), a view
        # (K, M') @ (M', F): NumPy's own product (~10% faster than SciPy's sgemm on this shape here)
        dw_rows[g] += rows.T @ dout[first - lo:end - lo].reshape(-1, f)


def filters(dw_rows: np.ndarray, w_shape) -> np.ndarray:
    """(HH/fold, K, F) row-group gradients -> (F, C, HH, WW)."""
    f, c, hh, ww = w_shape
    return np.ascontiguousarray(dw_rows.reshape(hh, ww, c, f).transpose(3, 2, 0, 1))


def bias_grad(dout: np.ndarray) -> np.ndarray:
    """dout (..., F) -> (F,): a BLAS product with ones, 4x faster than sum(axis=0) here."""
    dout_mat = dout.reshape(-1, dout.shape[-1])  # (M, F)
    return np.ones(dout_mat.shape[0], dout.dtype) @ dout_mat


def backward(dout: np.ndarray, cache: Columns, need_dx: bool = True, need_db: bool = True):
    """dout (Hout, N, Wout, F), cache from ``forward`` -> dx (H, N, W, C), dw (F, C, HH, WW), db (F,). ``need_dx``
    False: dx is None (a network's first layer has no use for it); ``need_db`` False: db is None (no bias)."""
    dw_rows = np.zeros(cache.w_rows.shape, dout.dtype)  # (HH/fold, K, F)
    h_out, band = cache.out_shape[0], _band_rows(cache, dout.dtype.itemsize)
    for lo in range(0, h_out, band):  # by bands: each band's column rows are read from memory once, for all groups
        add_weight_grads(cache, dout[lo:lo + band], lo, min(lo + band, h_out), dw_rows)
    dw, db = filters(dw_rows, cache.w_shape), (bias_grad(dout) if need_db else None)
    return (input_gradient(dout, cache) if need_dx else None), dw, db


def input_gradient(dout: np.ndarray, cache: Columns) -> np.ndarray:
    """dout (Hout, N, Wout, F) -> dx (H, N, W, C), the faster way for the shape. Measured here (one thread, batch
    64, whole training steps): the transposed convolution is ~2 % faster for a VGG's 3x3 layers of 32 and 64
    channels and up to ~2x for a ResNet's of 16 and 32 (stride 1), but ~10 % slower for LeNet's 5x5 conv2 (32 -> 64
    channels), where col2im's 5 passes over a 160-column matrix beat building dout's 320-column one."""
    hh, ww = cache.w_shape[2:]
    if cache.stride == 1 and cache.pad < min(hh, ww) and max(hh, ww) <= 3:
        return transposed_input_grad(dout, cache)
    return input_grad(dout, cache)


def transposed_input_grad(dout: np.ndarray, cache: Columns) -> np.ndarray:
    """dout (Hout, N, Wout, F) -> dx (H, N, W, C) for stride 1, as the convolution of dout, padded by HH - 1 - pad,
    with the filters turned 180 degrees and their channels swapped: the column matrix of dout is a gather (one
    copy), where ``input_grad``'s col2im is a scatter-add of HH x WW passes (~2x the time for a ResNet's 16- and
    32-channel layers here). Same products, same FLOPs."""
    f, c, hh, ww = cache.w_shape
    w = cache.w_rows.reshape(hh, ww, c, f)  # (HH, WW, C, F), a view
    w_turned = np.ascontiguousarray(w[::-1, ::-1].transpose(2, 3, 0, 1))  # (C, F, HH, WW): w[f, c, HH-1-i, WW-1-j]
    dx, _ = forward(dout, w_turned, None, hh - 1 - cache.pad)  # (H, N, W, C)
    return dx


def input_grad(dout: np.ndarray, cache: Columns) -> np.ndarray:
    """dout (Hout, N, Wout, F) -> dx (H, N, W, C)."""
    k, f = cache.w_rows.shape[1:]
    ranges = list(cache.row_ranges(0, dout.shape[0]))
    dcols = np.empty(cache.cols.shape, dout.dtype)  # (Hc, N, Wout, K)
    # A group that writes every column row (row mode: the centre kernel row) goes first and overwrites instead of
    # adding, which spares zeroing ~10 MB; the others then add to it.
    covering = next((r for r in ranges if r[1] + r[3] == 0 and r[2] + r[3] == len(dcols)), None)  # first, end + shift
    if covering:
        ranges.remove(covering)
        g, first, end, _ = covering
        np.matmul(dout[first:end].reshape(-1, f), cache.w_rows[g].T, out=dcols.reshape(-1, k))  # (M, F) @ (F, K)
    else:
        dcols[:] = 0
    for g, first, end, shift in ranges:
        target = dcols[first + shift:end + shift].reshape(-1, k)  # (M', K), a view
        # target += (M', F) @ (F, K)
        _matmul_add(dout[first:end].reshape(-1, f), np.ascontiguousarray(cache.w_rows[g].T), target)
    ww = cache.w_shape[3]
    if cache.phases == 1:
        return _col2im(dcols, cache.fold, cache.x_shape, ww, cache.pad_h, cache.pad, cache.stride)
    h, n, wd, c = cache.x_shape
    dx = np.empty(cache.x_shape, dout.dtype)  # (H, N, W, C)
    for p in range(cache.phases):  # each phase's column rows scatter into its own input rows, places s apart
        start, length = _phase_rows(h, cache.phases, p)
        dx[p::cache.phases] = _col2im(dcols[start:start + length], 1, (length, n, wd, c), ww, 0, cache.pad, 1,
                                      cache.stride)
    return dx


def forward_1x1(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int = 1):
    """A 1x1 convolution without padding (a projection shortcut): one product over the pixels it reads, no columns.
    x (H, N, W, C), w (F, C, 1, 1), b (F,) or None -> out (H', N, W', F), cache."""
    xs = x[::stride, :, ::stride, :]  # (H', N, W', C), sub-sampled
    xs_mat = np.ascontiguousarray(xs).reshape(-1, xs.shape[-1])  # (H'N W', C)
    out = xs_mat @ w[:, :, 0, 0].T  # (H'N W', C) @ (C, F) -> (H'N W', F)
    if b is not None:
        out += b
    return out.reshape(*xs.shape[:3], -1), (xs_mat, x.shape, w, stride)  # (H', N, W', F)


def backward_1x1(dout: np.ndarray, cache, need_dx: bool = True, need_db: bool = True):
    """Of ``forward_1x1``: dout (H', N, W', F) -> dx (H, N, W, C) or None, dw (F, C, 1, 1), db (F,) or None."""
    xs_mat, x_shape, w, stride = cache
    dout_mat = dout.reshape(-1, dout.shape[-1])  # (H'N W', F)
    dw = (dout_mat.T @ xs_mat)[:, :, None, None]  # (F, H'N W') @ (H'N W', C) -> (F, C, 1, 1)
    dx = (dout_mat @ w[:, :, 0, 0]).reshape(*dout.shape[:3], -1) if need_dx else None  # (H'N W', F) @ (F, C)
    if dx is not None and stride > 1:  # only the sub-sampled pixels get a gradient
        dxs, dx = dx, np.zeros(x_shape, dout.dtype)  # (H', N, W', C) into (H, N, W, C)
        dx[::stride, :, ::stride, :] = dxs
    return dx, dw, (dout_mat.sum(axis=0) if need_db else None)


def _matmul_add(a: np.ndarray, b: np.ndarray, out: np.ndarray, add: bool = True) -> None:
    """out += a @ b in one BLAS call (beta = 1), with no temporary and no extra pass over ``out``; with ``add``
    False, out = a @ b (beta = 0). BLAS is column-major: for C-contiguous arrays, out.T += b.T @ a.T is the same
    product on Fortran-contiguous views, so nothing is copied. Anything else takes the plain NumPy path."""
    blas_ready = (out.dtype in (np.float32, np.float64) and a.dtype == b.dtype == out.dtype
                  and b.flags.c_contiguous and out.flags.c_contiguous)
    gemm = blas.sgemm if out.dtype == np.float32 else blas.dgemm
    beta = 1.0 if add else 0.0
    if blas_ready and a.flags.c_contiguous:
        gemm(1.0, b.T, a.T, beta=beta, c=out.T, overwrite_c=1)
    elif blas_ready and a.flags.f_contiguous:  # a tap-major matrix: a itself is column-major, op(a) = a.T
        gemm(1.0, b.T, a, beta=beta, c=out.T, trans_b=1, overwrite_c=1)
    elif add:
        out += a @ b
    else:
        np.matmul(a, b, out=out)


def _windows(x_pad: np.ndarray, fold: int, ww: int, w_out: int, stride: int = 1,
             stride_w: int | None = None) -> np.ndarray:
    """(Hp, N, Wp, C) -> a read-only view (Hc, N, Wout, fold, WW, C), Hc = (Hp - fold) // stride + 1: the ``fold``
    x ``WW`` patch at each place (places ``stride`` rows and ``stride_w`` (default ``stride``) columns apart)."""
    hp, n, _, c = x_pad.shape
    s_h, s_n, s_w, s_c = x_pad.strides
    stride_w = stride if stride_w is None else stride_w
    return as_strided(x_pad, shape=((hp - fold) // stride + 1, n, w_out, fold, ww, c),
                      strides=(stride * s_h, s_n, stride_w * s_w, s_h, s_w, s_c), writeable=False)


def _im2col(x_pad: np.ndarray, fold: int, ww: int, w_out: int, stride: int = 1) -> np.ndarray:
    """(Hp, N, Wp, C) -> (Hc, N, Wout, fold*WW*C), the patches of ``_windows`` as a matrix's rows."""
    windows = _windows(x_pad, fold, ww, w_out, stride)  # (Hc, N, Wout, fold, WW, C)
    # An explicit copy: with fold == 1 a reshape alone would return an overlapping view, and every product would
    # then copy its rows again.
    return np.ascontiguousarray(windows).reshape(*windows.shape[:3], -1)


def _tap_major_columns(x_pad: np.ndarray, hh: int, ww: int, h_out: int, w_out: int) -> np.ndarray:
    """The full im2col of one-channel images x_pad (Hp, N, Wp), stored tap-major: a (Hout, N, Wout, HH*WW) view of
    a C-ordered (HH*WW, Hout, N, Wout) array. Each tap is one copy of a shifted window, with runs of Wout values;
    the place-major copy of ``_im2col`` moves runs of WW values (~3x the time for LeNet's and ResNet's first
    layers on grey images here). ``_row_matrix`` gives its rows as an F-ordered view."""
    taps = np.empty((hh * ww, h_out, x_pad.shape[1], w_out), x_pad.dtype)  # (HH*WW, Hout, N, Wout)
    for i in range(hh):
        for j in range(ww):
            taps[i * ww + j] = x_pad[i:i + h_out, :, j:j + w_out]
    return taps.transpose(1, 2, 3, 0)


def _row_matrix(cols: np.ndarray, a: int, b: int) -> np.ndarray:
    """Column rows [a, b) of cols (Hc, N, Wout, K) as an (M', K) matrix, a view: C-ordered, or F-ordered for a
    tap-major matrix (``_tap_major_columns``)."""
    band = cols[a:b]
    if band.flags.c_contiguous:
        return band.reshape(-1, band.shape[-1])
    return band.transpose(3, 0, 1, 2).reshape(band.shape[-1], -1).T  # (K, M') C-ordered -> (M', K)


def _col2im(dcols: np.ndarray, fold: int, x_shape, ww: int, pad_h: int, pad: int, stride: int = 1,
            stride_w: int | None = None) -> np.ndarray:
    """Scatter-add (Hc, N, Wout, fold*WW*C) column gradients back to (H, N, W, C). The column rows cover the input
    padded by ``pad_h`` rows and ``pad`` columns on each side; place (a, b)'s patch starts at padded row a * stride,
    column b * stride_w (default: stride). Places whose indices step by ``ceil(fold / stride)`` rows and
    ``ceil(WW / stride_w)`` columns have patches that do not overlap, so each such class is one vectorised ``+=``
    into a strided view of the padded gradient (at stride 1 with inner runs of WW*C contiguous values)."""
    h, n, wd, c = x_shape
    hc, _, w_out, _ = dcols.shape
    dcols6 = dcols.reshape(hc, n, w_out, fold, ww, c)
    dx_pad = np.zeros((h + 2 * pad_h, n, wd + 2 * pad, c), dcols.dtype)  # (H + 2*pad_h, N, Wp, C)
    s_h, s_n, s_w, s_c = dx_pad.strides
    stride_w = stride if stride_w is None else stride_w
    step_a, step_b = -(-fold // stride), -(-ww // stride_w)  # places apart whose patches never overlap
    for qa in range(step_a):
        ka = len(range(qa, hc, step_a))
        for qb in range(step_b):
            kb = len(range(qb, w_out, step_b))
            if not ka or not kb:
                continue
            corner = dx_pad[qa * stride:, :, qb * stride_w:, :]  # a view; its patches are disjoint in memory
            block = as_strided(corner, shape=(ka, n, kb, fold, ww, c),
                               strides=(step_a * stride * s_h, s_n, step_b * stride_w * s_w, s_h, s_w, s_c))
            block += dcols6[qa::step_a, :, qb::step_b]  # (ka, N, kb, fold, WW, C)
    return np.ascontiguousarray(dx_pad[pad_h:pad_h + h, :, pad:pad + wd, :])


class Conv2D(Weighted):
    """Options ``filters``, ``kernel`` (3), ``stride`` (1), ``padding`` (0, "same", "valid"), ``bias``, ``init``."""
    kind = "conv2d"

    def __init__(self, name: str, options: dict):
        super().__init__(name, options)
        self.filters, self.kernel = int(options["filters"]), int(options.get("kernel", 3))
        self.stride, pad = int(options.get("stride", 1)), options.get("padding", 0)
        self.pad = (self.kernel - 1) // 2 if pad == "same" else 0 if pad == "valid" else int(pad)
        if pad == "same" and self.kernel % 2 == 0:
            self.refuse(f"padding 'same' needs an odd kernel, got {self.kernel}")
        if min(self.filters, self.kernel, self.stride) < 1 or self.pad < 0:
            self.refuse("filters, kernel and stride must be >= 1 and padding >= 0")
        self.pointwise = self.kernel == 1 and self.pad == 0

    def build(self, in_shape):
        c, h, w = self.images(in_shape)
        h_out, w_out = ((n + 2 * self.pad - self.kernel) // self.stride + 1 for n in (h, w))
        if h_out < 1 or w_out < 1:
            self.refuse(f"a {self.kernel}x{self.kernel} kernel with padding {self.pad} does not fit", in_shape)
        return self.filters, h_out, w_out

    def init(self, in_shape, rng):
        return self.weights(*init(self.filters, in_shape[0], self.kernel, self.kernel, rng))

    def forward(self, p, x, train, rng):
        if self.pointwise:
            return (*forward_1x1(x, p["W"], p.get("b"), self.stride), {})
        return (*forward(x, p["W"], p.get("b"), self.pad, self.stride), {})  # (H', N, W', F)

    def backward(self, p, dout, cache, need_dx=True, overwrite=False):
        dx, dw, db = (backward_1x1 if self.pointwise else backward)(dout, cache, need_dx=need_dx, need_db=self.bias)
        return dx, self.grads(dw, db)

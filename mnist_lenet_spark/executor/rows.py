"""A DataFrame row's features and label as the trainer reads them: the model's C x H x W uint8 pixels
(channel-major; MNIST: 784; given as bytes, or as numbers in a declared pixel range, never rounded) and a class
0 .. classes - 1, or the problem with them. Used on the executors by staging (``convert_rows``) and by the model's
``transform`` (``predict_pixels``), and on the driver for arrays (``model_pixels``); imports no pyspark."""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from mnist_lenet_spark.config import ConfigError
from mnist_lenet_spark.data import MNIST_CLASSES, MNIST_SHAPE
from mnist_lenet_spark.executor.inference import predict_images
from mnist_lenet_spark.models import base


def short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a bad row's example in an error line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


#: How features give pixel values: whole numbers 0..255 as stored, or 0..1 (pixels / 255, a common preprocessing
#: step; binary features then hold bytes 0 and 1).
PIXEL_RANGES = ("0..255", "0..1")
_GRID_TOLERANCE = 1e-3  # in units of 1/255: float32 rounding of k / 255 is ~1e-5 of one step


def check_pixel_range(pixel_range: str) -> str:
    """``pixel_range`` if it is one of PIXEL_RANGES; else ValueError naming the choices."""
    if pixel_range not in PIXEL_RANGES:
        raise ValueError(f"pixel range must be one of {', '.join(PIXEL_RANGES)}, got {pixel_range!r}")
    return pixel_range


def as_pixels(values: np.ndarray, pixel_range: str | None, declare=lambda r: f"pixelRange '{r}'") -> np.ndarray | str:
    """uint8 pixels of the same shape as ``values``, or the problem with them. uint8 values are pixels 0..255 as
    they are (with ``pixel_range`` '0..1': bytes 0 or 1, binarized images); numbers of another dtype need a declared
    ``pixel_range``: whole numbers 0..255, or multiples of 1/255 in 0..1. Nothing is rounded into range or onto the
    8-bit grid: such a value is a problem, named with a hint. ``declare(range)`` spells how the caller declares a
    range (the estimator's Param by default)."""
    if values.dtype == np.uint8:
        if pixel_range == "0..1":  # bytes of 0 and 1 (binarized images)
            top = int(values.max()) if values.size else 0
            if top > 1:
                return f"has bytes outside 0..1 (max {top}); pixels 0..255 need {declare('0..255')}"
            return values * np.uint8(255)
        return values
    if values.dtype == np.bool_ or not (np.issubdtype(values.dtype, np.integer)
                                        or np.issubdtype(values.dtype, np.floating)):
        return f"has dtype {values.dtype}: pixels are uint8, or numbers in a declared range"
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if pixel_range is None:
        return (f"has dtype {values.dtype} with values from {low} to {high}: give uint8 pixels 0..255, or declare "
                f"the range, {declare('0..255')} or {declare('0..1')}")
    top = 1.0 if pixel_range == "0..1" else 255.0
    finite = bool(np.all(np.isfinite(values))) if np.issubdtype(values.dtype, np.floating) else True
    if not finite:
        return f"has values outside {pixel_range} (NaN or infinity)"
    if low < 0 or high > top:
        hint = f" (pixels 0..255 need {declare('0..255')})" if pixel_range == "0..1" and high > 1 else ""
        return f"has values outside {pixel_range} (min {low}, max {high}){hint}"
    steps = values * (values.dtype.type(255.0 / top) if np.issubdtype(values.dtype, np.floating) else 255 // int(top))
    whole = np.rint(steps)  # (same shape) in units of one 8-bit step
    off = np.flatnonzero(np.abs(steps - whole) > (_GRID_TOLERANCE if pixel_range == "0..1" else 0.0))
    if off.size:
        index = tuple(int(i) for i in np.unravel_index(int(off[0]), values.shape))
        where = f"({values[index].item()!r} at position {index[0] if values.ndim == 1 else index})"
        if pixel_range == "0..255":
            return f"has a value that is not a whole number {where}; pixels scaled to 0..1 need {declare('0..1')}"
        return (f"has a value that is not a multiple of 1/255 {where}: the trainer keeps 8-bit pixels and will not "
                f"round it; give whole numbers 0..255 or k/255")
    return whole.astype(np.uint8)


def model_pixels(model: base.Model, images, what: str, pixel_range: str | None = None,
                 declare=lambda r: f"pixel_range='{r}'") -> np.ndarray:
    """uint8 ``images`` (N, ...) of the model's C x H x W pixels each, from an array: uint8 values are pixels 0..255
    (the dtype says so), numbers of another dtype are read in the declared ``pixel_range`` ('0..255' or '0..1',
    ``as_pixels``) and refused without one. Else a ConfigError naming ``what``, the dtype and the values found;
    ``declare(range)`` spells how the caller declares a range."""
    if pixel_range is not None and pixel_range not in PIXEL_RANGES:
        raise ConfigError(f"pixel_range: must be one of {', '.join(PIXEL_RANGES)} or None, got {pixel_range!r}")
    images = np.asarray(images)
    shape, pixels = images.shape, int(np.prod(model.input_shape))
    if len(shape) < 2 or int(np.prod(shape[1:])) != pixels:
        raise ConfigError(f"{what}: shape {shape}, expected (N, ...) of {pixels} pixels each (the model takes "
                          f"{'x'.join(map(str, model.input_shape))} images)")
    result = as_pixels(images, None if images.dtype == np.uint8 else pixel_range, declare)
    if isinstance(result, str):
        raise ConfigError(f"{what}: {result}")
    return result


def row_pixels(features, pixels: int = int(np.prod(MNIST_SHAPE)), pixel_range: str = "0..255") -> np.ndarray | str:
    """uint8 (pixels,) from ``pixels`` bytes or from a Vector or sequence of ``pixels`` numbers, in ``pixel_range``
    (``as_pixels``); else the problem."""
    if features is None:
        return "is null"
    if isinstance(features, (bytes, bytearray)):
        if len(features) != pixels:
            return f"has {len(features)} bytes, expected {pixels}"
        return as_pixels(np.frombuffer(features, np.uint8), pixel_range)  # (pixels,)
    try:
        values = features.toArray() if hasattr(features, "toArray") else np.asarray(features, np.float64)
    except (TypeError, ValueError):
        return "holds a null or a non-number"
    if values.shape != (pixels,):
        return f"has {values.size} values, expected {pixels}"
    return as_pixels(values, pixel_range)


def example_row(row, features_col: str, label_col: str) -> str:
    """A bad row as its error line shows it (``row``: a mapping of the two columns)."""
    return f"example row: {label_col}={short(row[label_col])}, {features_col}={short(row[features_col])}"


def row_label(label, classes: int = MNIST_CLASSES) -> int | str:
    """The class 0 .. classes - 1 of a label given as an integer or an integral double; else the problem."""
    if label is None:
        return "is null"
    if isinstance(label, bool) or not isinstance(label, (int, float, np.integer, np.floating)):
        return f"is not a number: {short(label)}"
    if not math.isfinite(label) or label != int(label):
        return f"is not a whole number: {label!r}"
    if not 0 <= label <= classes - 1:
        return f"is outside 0..{classes - 1}: {label!r}"
    return int(label)


def convert_rows(features_col: str, label_col: str, edges: np.ndarray, first_index: list[int], pixels: int,
                 classes: int, pixel_range: str, partition: int, rows: Iterator) -> Iterator[tuple[int, tuple]]:
    """(shard, (global row index, label, ``pixels`` pixel bytes | error)) for each row of one input partition. Row
    ``i`` of the DataFrame belongs to shard ``k`` when ``edges[k] <= i < edges[k + 1]``; the global index is this
    partition's ``first_index`` plus the row's position in it."""
    for i, row in enumerate(rows, first_index[partition]):
        shard = int(np.searchsorted(edges, i, side="right")) - 1
        image, label = row_pixels(row[features_col], pixels, pixel_range), row_label(row[label_col], classes)
        problem = None
        if isinstance(image, str):
            problem = f"column '{features_col}' {image}"
        elif isinstance(label, str):
            problem = f"column '{label_col}' {label}"
        if problem:
            yield shard, (i, None, f"row {i}: {problem} ({example_row(row, features_col, label_col)})")
        else:
            yield shard, (i, label, image.tobytes())


def predict_pixels(model: base.Model, params: base.Params, features, chunk: int = 500, pixel_range: str = "0..255"):
    """(prediction (n,), probability (n, classes), log-probability (n, classes)) for a pandas Series of
    features (Vectors as arrays, number sequences in ``pixel_range`` or binaries of the model's C x H x W pixels)."""
    shape = tuple(model.input_shape)  # (C, H, W)
    images = [row_pixels(f, int(np.prod(shape)), pixel_range) for f in features]
    bad = next((p for p in images if isinstance(p, str)), None)
    if bad is not None:
        raise ValueError(f"features {bad}")
    images = np.stack(images).reshape(-1, *shape) if images else np.empty((0, *shape), np.uint8)  # (n, C, H, W)
    probs = predict_images(model, params, images, chunk).astype(np.float64)  # (n, classes)
    return np.argmax(probs, axis=1).astype(np.float64), probs, np.log(np.maximum(probs, 1e-300))

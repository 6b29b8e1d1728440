"""A DataFrame row's features and label as the trainer reads them: the model's C x H x W uint8 pixels
(channel-major; MNIST: 784) and a class 0 .. classes - 1, or the problem with them. Used on the executors by
staging (``convert_rows``) and by the model's ``transform`` (``predict_pixels``); imports no pyspark."""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from mnist_lenet_spark.data import MNIST_CLASSES, MNIST_SHAPE
from mnist_lenet_spark.executor.inference import predict_images
from mnist_lenet_spark.models import base


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def row_pixels(features, pixels: int = int(np.prod(MNIST_SHAPE))) -> np.ndarray | str:
    """uint8 (pixels,) from a Vector, a sequence of ``pixels`` numbers in 0..255 (rounded) or that many bytes;
    else the problem."""
    if features is None:
        return "is null"
    if isinstance(features, (bytes, bytearray)):
        if len(features) != pixels:
            return f"has {len(features)} bytes, expected {pixels}"
        return np.frombuffer(features, np.uint8)
    try:
        values = features.toArray() if hasattr(features, "toArray") else np.asarray(features, np.float64)
    except (TypeError, ValueError):
        return "holds a null or a non-number"
    if values.shape != (pixels,):
        return f"has {values.size} values, expected {pixels}"
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 255:
        return f"has values outside 0..255 (min {values.min()}, max {values.max()})"
    return np.rint(values).astype(np.uint8)


def row_label(label, classes: int = MNIST_CLASSES) -> int | str:
    """The class 0 .. classes - 1 of a label given as an integer or an integral double; else the problem."""
    if label is None:
        return "is null"
    if isinstance(label, bool) or not isinstance(label, (int, float, np.integer, np.floating)):
        return f"is not a number: {_short(label)}"
    if not math.isfinite(label) or label != int(label):
        return f"is not a whole number: {label!r}"
    if not 0 <= label <= classes - 1:
        return f"is outside 0..{classes - 1}: {label!r}"
    return int(label)


def convert_rows(features_col: str, label_col: str, edges: np.ndarray, first_index: list[int], pixels: int,
                 classes: int, partition: int, rows: Iterator) -> Iterator[tuple[int, tuple]]:
    """(shard, (global row index, label, ``pixels`` pixel bytes | error)) for each row of one input partition.

    Row ``i`` of the DataFrame belongs to shard ``k`` when ``edges[k] <= i < edges[k + 1]``; the
    global index is this partition's ``first_index`` plus the row's position in it.
    """
    for i, row in enumerate(rows, first_index[partition]):
        shard = int(np.searchsorted(edges, i, side="right")) - 1
        image, label = row_pixels(row[features_col], pixels), row_label(row[label_col], classes)
        problem = None
        if isinstance(image, str):
            problem = f"column '{features_col}' {image}"
        elif isinstance(label, str):
            problem = f"column '{label_col}' {label}"
        if problem:
            example = f"{label_col}={_short(row[label_col])}, {features_col}={_short(row[features_col])}"
            yield shard, (i, None, f"row {i}: {problem} (example row: {example})")
        else:
            yield shard, (i, label, image.tobytes())


def predict_pixels(model: base.Model, params: base.Params, features, chunk: int = 500):
    """(prediction (n,), probability (n, classes), log-probability (n, classes)) for a pandas Series of
    features (Vectors as arrays, number sequences or binaries of the model's C x H x W pixels)."""
    shape = tuple(model.input_shape)  # (C, H, W)
    images = [row_pixels(f, int(np.prod(shape))) for f in features]
    bad = next((p for p in images if isinstance(p, str)), None)
    if bad is not None:
        raise ValueError(f"features {bad}")
    images = np.stack(images).reshape(-1, *shape) if images else np.empty((0, *shape), np.uint8)  # (n, C, H, W)
    probs = predict_images(model, params, images, chunk).astype(np.float64)  # (n, classes)
    return np.argmax(probs, axis=1).astype(np.float64), probs, np.log(np.maximum(probs, 1e-300))

"""A DataFrame row's features and label as the trainer reads them: 784 uint8 pixels and a class 0..9, or the
problem with them. Used on the executors by staging (``convert_rows``) and by the model's ``transform``
(``predict_pixels``); imports no pyspark."""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from .models import base
from .tasks import predict_images

PIXELS = 28 * 28


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def row_pixels(features) -> np.ndarray | str:
    """uint8 (784,) from a Vector, a sequence of 784 numbers in 0..255 (rounded) or 784 bytes; else the problem."""
    if features is None:
        return "is null"
    if isinstance(features, (bytes, bytearray)):
        if len(features) != PIXELS:
            return f"has {len(features)} bytes, expected {PIXELS}"
        return np.frombuffer(features, np.uint8)
    try:
        values = features.toArray() if hasattr(features, "toArray") else np.asarray(features, np.float64)
    except (TypeError, ValueError):
        return "holds a null or a non-number"
    if values.shape != (PIXELS,):
        return f"has {values.size} values, expected {PIXELS}"
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 255:
        return f"has values outside 0..255 (min {values.min()}, max {values.max()})"
    return np.rint(values).astype(np.uint8)


def row_label(label) -> int | str:
    """The class 0..9 of a label given as an integer or an integral double; else the problem."""
    if label is None:
        return "is null"
    if isinstance(label, bool) or not isinstance(label, (int, float, np.integer, np.floating)):
        return f"is not a number: {_short(label)}"
    if not math.isfinite(label) or label != int(label):
        return f"is not a whole number: {label!r}"
    if not 0 <= label <= 9:
        return f"is outside 0..9: {label!r}"
    return int(label)


def convert_rows(features_col: str, label_col: str, edges: np.ndarray, first_index: list[int], partition: int,
                 rows: Iterator) -> Iterator[tuple[int, tuple]]:
    """(shard, (global row index, label, 784 pixel bytes | error)) for each row of one input partition.

    Row ``i`` of the DataFrame belongs to shard ``k`` when ``edges[k] <= i < edges[k + 1]``; the
    global index is this partition's ``first_index`` plus the row's position in it.
    """
    for i, row in enumerate(rows, first_index[partition]):
        shard = int(np.searchsorted(edges, i, side="right")) - 1
        pixels, label = row_pixels(row[features_col]), row_label(row[label_col])
        problem = None
        if isinstance(pixels, str):
            problem = f"column '{features_col}' {pixels}"
        elif isinstance(label, str):
            problem = f"column '{label_col}' {label}"
        if problem:
            example = f"{label_col}={_short(row[label_col])}, {features_col}={_short(row[features_col])}"
            yield shard, (i, None, f"row {i}: {problem} (example row: {example})")
        else:
            yield shard, (i, label, pixels.tobytes())


def predict_pixels(model: base.Model, params: base.Params, features, chunk: int = 500):
    """(prediction (n,), probability (n, classes), log-probability (n, classes)) for a pandas Series of
    features (Vectors as arrays, number sequences or 784-byte binaries)."""
    pixels = [row_pixels(f) for f in features]
    bad = next((p for p in pixels if isinstance(p, str)), None)
    if bad is not None:
        raise ValueError(f"features {bad}")
    images = np.stack(pixels).reshape(-1, 28, 28) if pixels else np.empty((0, 28, 28), np.uint8)
    probs = predict_images(model, params, images, chunk).astype(np.float64)  # (n, classes)
    return np.argmax(probs, axis=1).astype(np.float64), probs, np.log(np.maximum(probs, 1e-300))

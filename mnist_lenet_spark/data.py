"""MNIST readers (IDX, gzip or raw; SystemML's CSV), validation split and batch scaling. Images stay uint8 ``(N, 28,
28)`` and labels int64 ``(N,)`` until a batch is used: 4x less memory and 4x less to ship to Spark executors than
float32. ``scale_batch`` turns a batch into the float32 ``(N, 1, 28, 28)`` in [-1, 1] the model expects."""
from __future__ import annotations

import gzip
import logging
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import files

#: MNIST's images as the models take them, (channels, height, width), and its class count: every default
MNIST_SHAPE, MNIST_CLASSES = (1, 28, 28), 10

log = logging.getLogger(__name__)

IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
VALIDATION_SIZE = 5000  # SystemML: the first 5,000 training images are the validation set
BUNDLED_DIR = files.resource("data", "mnist")  # a checkout's data/mnist, or an installed wheel's copy
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and the problem."""


class Split(NamedTuple):
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64


class Mnist(NamedTuple):
    train: Split
    validation: Split
    test: Split


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    return gunzip(raw, path.name)


def gunzip(raw: bytes, name: str) -> bytes:
    """The content of a file's bytes: decompressed when they are gzip data."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # truncated, or a damaged deflate stream
        raise DataError(f"{name}: corrupt gzip data ({e})") from None


def _header(raw: bytes, name: str, magic: int, ndim: int) -> list[int]:
    need = 4 + 4 * ndim
    if len(raw) < need:
        raise DataError(f"{name}: truncated header: expected {need} bytes, found {len(raw)}")
    found = int.from_bytes(raw[0:4], "big")
    if found != magic:
        raise DataError(f"{name}: wrong magic number {found}, expected {magic}")
    return [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """IDX3 image file -> uint8 (N, 28, 28)."""
    path = Path(path)
    return parse_idx_images(_read_bytes(path), path.name)


def parse_idx_images(raw: bytes, name: str) -> np.ndarray:
    """The (decompressed) bytes of an IDX3 image file -> uint8 (N, 28, 28); ``name`` is for errors."""
    count, rows, cols = _header(raw, name, IMAGE_MAGIC, 3)
    if (rows, cols) != (28, 28):
        raise DataError(f"{name}: images are {rows}x{cols}, expected 28x28")
    expected = count * rows * cols
    body = len(raw) - 16
    if body != expected:
        what = "truncated" if body < expected else "trailing data"
        raise DataError(f"{name}: {what}: expected {expected} pixel bytes, found {body}")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols)


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """IDX1 label file -> int64 (N,), each in 0..9."""
    path = Path(path)
    return parse_idx_labels(_read_bytes(path), path.name)


def parse_idx_labels(raw: bytes, name: str) -> np.ndarray:
    """The (decompressed) bytes of an IDX1 label file -> int64 (N,), each in 0..9."""
    (count,) = _header(raw, name, LABEL_MAGIC, 1)
    body = len(raw) - 8
    if body != count:
        what = "truncated" if body < count else "trailing data"
        raise DataError(f"{name}: {what}: expected {count} label bytes, found {body}")
    labels = np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)
    _check_labels(labels, name)
    return labels


def _check_labels(labels: np.ndarray, name: str) -> None:
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DataError(f"{name}: label {labels[bad[0]]} at item {bad[0]} is outside 0..9")


def read_idx_pair(images_path, labels_path) -> Split:
    """Images and labels that must agree in count."""
    images, labels = read_idx_images(images_path), read_idx_labels(labels_path)
    if len(images) != len(labels):
        raise DataError(f"{Path(images_path).name} has {len(images)} images but "
                        f"{Path(labels_path).name} has {len(labels)} labels")
    return Split(images, labels)


def read_csv(path: str | os.PathLike) -> Split:
    """SystemML's CSV: one image a line, ``label,p1,...,p784``, pixels 0..255, no header."""
    path = Path(path)
    lines = [line for line in _read_bytes(path).decode("ascii", errors="replace").splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{path.name}: empty file, expected lines of label,p1..p784")
    table = np.empty((len(lines), 785), np.int64)
    for i, line in enumerate(lines):
        values = line.split(",")
        if len(values) != 785:
            raise DataError(f"{path.name}: line {i + 1}: expected 785 values (label + 784 pixels), "
                            f"found {len(values)}")
        try:
            table[i] = [int(v) for v in values]
        except ValueError:
            raise DataError(f"{path.name}: line {i + 1}: not a list of integers") from None
    pixels, labels = table[:, 1:], table[:, 0]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path.name}: pixel values must be in 0..255")
    if labels.min() < 0:
        raise DataError(f"{path.name}: negative label {labels.min()}")
    _check_labels(labels, path.name)
    return Split(pixels.astype(np.uint8).reshape(-1, 28, 28), labels)


def load_mnist(data_dir: str | os.PathLike | None = None, validation_size: int = VALIDATION_SIZE) -> Mnist:
    """The four IDX files in ``data_dir`` (default: the bundled copy), split as SystemML does."""
    data_dir = Path(data_dir) if data_dir is not None else BUNDLED_DIR
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory does not exist")
    train = read_idx_pair(*(data_dir / name for name in FILES["train"]))
    test = read_idx_pair(*(data_dir / name for name in FILES["test"]))
    if not 0 <= validation_size < len(train.labels):
        raise DataError(f"validation size {validation_size} must be in 0..{len(train.labels) - 1}")
    log.info("loaded MNIST from %s: %d train, %d validation, %d test", data_dir,
             len(train.labels) - validation_size, validation_size, len(test.labels))
    v = validation_size
    return Mnist(Split(train.images[v:], train.labels[v:]), Split(train.images[:v], train.labels[:v]), test)


def scale_batch(images: np.ndarray, dtype=np.float32, shape: tuple[int, int, int] = MNIST_SHAPE) -> np.ndarray:
    """uint8 images (N, ...) of C x H x W pixels each (MNIST's (N, 28, 28), or channel-major (N, C, H, W) or
    (N, C*H*W)) -> (N, C, H, W) = (N, *shape) in [-1, 1], ``x / 255 * 2 - 1`` as SystemML. Only uint8: numbers
    in another range are read into uint8 first (``executor.rows.as_pixels``), never guessed at here."""
    if images.dtype != np.uint8:
        raise TypeError(f"scale_batch takes uint8 pixels 0..255, got {images.dtype}")
    x = images.astype(dtype)
    x *= dtype(2.0 / 255.0) if dtype is np.float32 else 2.0 / 255.0
    x -= 1
    return x.reshape(len(images), *shape)

"""A user's images as the trainer's features: C x H x W uint8 bytes, channel-major, from Spark's image data source (its
``image`` struct: BGR(A), channels-last, row-major), from PNG/JPEG file contents (``binaryFile``, decoded with Pillow)
or from arrays of numbers in a declared layout. Sizes and channel counts are checked against what was asked; an image is
resized or its channels converted only when the caller asked for it, else it is refused with an ``ImageError`` of one
line naming the image and the problem. Pixels travel as (H, W, C) uint8 arrays in their natural channel order (gray;
gray and alpha; RGB; RGBA) until ``to_features`` converts, resizes, orders and transposes them. Runs in Spark's Python
workers (the pandas UDFs of ``mnist_lenet_spark.images``); imports no pyspark."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from mnist_lenet_spark.data import DataError
from mnist_lenet_spark.executor import rows

CHANNELS = (1, 3)  # what the features may hold: grayscale, or colour in ``channel_order``
CHANNEL_ORDERS = ("rgb", "bgr")
LAYOUTS = ("HWC", "CHW", "HW")  # an array's declared layout: channels-last, channel-major, one channel
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # Pillow's mode of an (H, W, C) uint8 array
_NAMES = {1: "grayscale", 2: "grayscale and alpha", 3: "RGB", 4: "RGBA"}
_OPENCV_MODES = {0: 1, 16: 3, 24: 4}  # Spark's image struct: OpenCV type CV_8UC1, CV_8UC3, CV_8UC4 -> channels
_COLOUR_SPACES = ("CMYK", "YCbCr", "LAB", "HSV")  # 8-bit, but not RGB: converted only when asked
RESAMPLE = Image.Resampling.BILINEAR  # resize=True: Pillow's bilinear filter (antialiased when shrinking)


class ImageError(DataError):
    """An image that cannot become the asked features without a conversion nobody asked for; one line naming the
    image (its path or origin) and the problem."""


@dataclass(frozen=True)
class FeatureSpec:
    """What the features hold, and which changes the caller allowed. size: (H, W), or None to keep each image's own;
    channels: 1 or 3; channel_order: 'rgb' or 'bgr' (of 3-channel features); resize: resize an image of another size
    to ``size``; convert_channels: convert an image of another channel count (colour to grayscale by ITU-R 601-2
    luma, grayscale to RGB by copying, alpha dropped)."""
    size: tuple[int, int] | None = None
    channels: int = 1
    channel_order: str = "rgb"
    resize: bool = False
    convert_channels: bool = False


def to_features(pixels: np.ndarray, origin: str, spec: FeatureSpec) -> bytes:
    """C x H x W uint8 bytes, channel-major, of ``pixels`` (H, W, C) uint8 in natural channel order, converted and
    resized only as ``spec`` allows; ImageError naming ``origin`` otherwise."""
    height, width, channels = pixels.shape
    if channels != spec.channels:
        if not spec.convert_channels:
            raise ImageError(f"image {origin}: has {channels} channels ({_NAMES[channels]}), expected {spec.channels}; "
                             f"pass convert_channels=True to convert it ({_conversion(channels, spec.channels)})")
        target = _MODES[spec.channels]
        pixels = np.asarray(_pillow(pixels).convert(target)).reshape(height, width, spec.channels)  # (H, W, C)
    if spec.size is not None and (height, width) != tuple(spec.size):
        if not spec.resize:
            raise ImageError(f"image {origin}: is {height} x {width} pixels (H x W), expected {spec.size[0]} x "
                             f"{spec.size[1]}; pass resize=True to resize it (bilinear), or size=None to keep "
                             f"each image's size")
        resized = _pillow(pixels).resize((spec.size[1], spec.size[0]), RESAMPLE)  # Pillow takes (W, H)
        pixels = np.asarray(resized).reshape(spec.size[0], spec.size[1], spec.channels)  # (H, W, C)
    if spec.channels == 3 and spec.channel_order == "bgr":
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)).tobytes()  # (H, W, C) -> (C, H, W)


def _pillow(pixels: np.ndarray) -> Image.Image:
    """A Pillow image of (H, W, C) uint8 pixels, C in 1..4 (mode L, LA, RGB or RGBA)."""
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)  # (H, W) or (H, W, C)


def _conversion(found: int, wanted: int) -> str:
    """How convert_channels turns ``found`` channels into ``wanted``, in words."""
    colour = {(3, 1): "colour to grayscale by luma", (4, 1): "colour to grayscale by luma",
              (1, 3): "grayscale copied to R, G and B", (2, 3): "grayscale copied to R, G and B"}.get((found, wanted))
    return ", ".join(part for part in (colour, "alpha dropped" if found in (2, 4) else None) if part)


def decode_file(content: bytes | None, origin: str, convert_channels: bool = False) -> np.ndarray:
    """(H, W, C) uint8 pixels, in natural channel order, of an image file's bytes (PNG, JPEG, or any format Pillow
    reads; its first frame; EXIF orientation not applied); ImageError naming ``origin`` when it is not an 8-bit
    image Pillow reads. Bilevel images read as 0 and 255, palette images as their RGB(A) colours; CMYK and other
    colour spaces only with ``convert_channels`` (to RGB)."""
    if content is None:
        raise ImageError(f"image {origin}: has no content (null)")
    try:
        image = Image.open(io.BytesIO(content))
        wide = next((raw for raw in map(_rawmode, image.tile or []) if ";16" in raw), None)  # e.g. 'RGB;16B'
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"image {origin}: cannot be decoded ({type(e).__name__}: "
                         f"{' '.join(str(e).split()) or 'no message'})") from None
    mode = image.mode
    if wide:  # Pillow reads a 16-bit colour PNG as 8 bits a channel: it keeps each sample's high byte
        raise ImageError(f"image {origin}: has 16 bits a channel (stored as {wide!r}); convert the file to 8 bits "
                         f"a channel")
    if mode == "1":
        image = image.convert("L")
    elif mode in ("P", "PA"):
        image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
    elif mode in _COLOUR_SPACES:
        if not convert_channels:
            raise ImageError(f"image {origin}: is in the {mode} colour space; pass convert_channels=True to convert "
                             f"it to RGB")
        image = image.convert("RGB")
    elif mode not in _MODES.values():
        raise ImageError(f"image {origin}: has pixels of Pillow mode {mode!r}, not 8-bit grayscale or colour; "
                         f"convert the file to 8 bits a channel")
    pixels = np.asarray(image, np.uint8)  # (H, W) or (H, W, C)
    return pixels.reshape(*pixels.shape[:2], -1)  # (H, W, C)


def _rawmode(tile) -> str:
    """The raw mode a Pillow tile decodes from ('RGB;16B' for a 16-bit colour PNG)."""
    args = tile[3] if len(tile) > 3 else None
    return str(args if not isinstance(args, tuple) else args[0] if args else "")


def from_image_struct(origin, height, width, n_channels, mode, data) -> np.ndarray:
    """(H, W, C) uint8 pixels, in natural channel order, of one row of Spark's image data source (``data``: BGR(A),
    channels-last, row-major); ImageError naming ``origin`` for an image Spark could not decode (``dropInvalid``
    off) or a row whose fields disagree."""
    if data is None or height is None or height < 0 or not len(data):
        raise ImageError(f"image {origin}: Spark's image data source could not decode it (an invalid image row)")
    if _OPENCV_MODES.get(mode) != n_channels:
        raise ImageError(f"image {origin}: has OpenCV mode {mode} with {n_channels} channels; expected 8-bit "
                         f"CV_8UC1, CV_8UC3 or CV_8UC4")
    if len(data) != height * width * n_channels:
        raise ImageError(f"image {origin}: has {len(data)} bytes of data, not height x width x nChannels = "
                         f"{height} x {width} x {n_channels}")
    pixels = np.frombuffer(data, np.uint8).reshape(height, width, n_channels)  # (H, W, C), BGR(A)
    if n_channels == 1:
        return pixels
    return pixels[:, :, [2, 1, 0, 3][:n_channels]]  # BGR(A) -> RGB(A)


def from_array(values, origin: str, layout: str, size: tuple[int, int] | None, pixel_range: str) -> np.ndarray:
    """(H, W, C) uint8 pixels of one array value: flat (H x W x C numbers in ``layout``, H and W from ``size``, C
    from the length) or nested as ``layout`` says ((H, W, C), (C, H, W) or (H, W)); numbers in ``pixel_range``,
    never rounded. Its channels are taken to be in the order the features keep. ImageError naming ``origin``."""
    if values is None:
        raise ImageError(f"image {origin}: is null")
    try:
        array = np.asarray(_nested(values))
    except (TypeError, ValueError):
        raise ImageError(f"image {origin}: is a ragged array or holds a null") from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number)):
        raise ImageError(f"image {origin}: holds a null or a non-number")
    if array.ndim == 1:
        if size is None:
            raise ImageError(f"image {origin}: a flat array needs size=(H, W)")
        height, width = size
        channels = array.size // (height * width) if height * width else 0
        if channels not in _MODES or array.size != height * width * channels or (layout == "HW" and channels != 1):
            allowed = "1" if layout == "HW" else "1 to 4"
            raise ImageError(f"image {origin}: has {array.size} values, not {height} x {width} x C for C in "
                             f"{allowed} (layout {layout})")
        array = array.reshape((height, width) if layout == "HW" else
                              (height, width, channels) if layout == "HWC" else (channels, height, width))
    elif array.ndim != len(layout):
        raise ImageError(f"image {origin}: is nested {array.ndim} deep, layout {layout} needs {len(layout)}")
    if layout == "HW":
        array = array[:, :, np.newaxis]  # (H, W) -> (H, W, 1)
    elif layout == "CHW":
        array = array.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if array.shape[2] not in _MODES:
        raise ImageError(f"image {origin}: has {array.shape[2]} channels (layout {layout}), expected 1 to 4")
    pixels = rows.as_pixels(array, pixel_range, declare=lambda r: f"pixel_range='{r}'")
    if isinstance(pixels, str):
        raise ImageError(f"image {origin}: {pixels}")
    return pixels


def _nested(values):
    """Arrow's nested arrays (object arrays of arrays) as nested lists NumPy stacks; flat numbers as they are."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values
    return [_nested(v) if isinstance(v, (np.ndarray, list, tuple)) else v for v in values]


def _origins(origins: pd.Series | None, count: int, fallback: str) -> list[str]:
    if origins is None:
        return [fallback] * count
    return [fallback if o is None else str(o) for o in origins]


def image_struct_batch(images: pd.DataFrame, spec: FeatureSpec) -> pd.Series:
    """The features (binary) of a batch of Spark image structs (columns named as Spark's image data source does)."""
    columns = zip(*(images[name] for name in ("origin", "height", "width", "nChannels", "mode", "data")))
    return pd.Series([to_features(from_image_struct(*row), row[0], spec) for row in columns], dtype=object)


def file_batch(contents: pd.Series, origins: pd.Series | None, spec: FeatureSpec, fallback: str) -> pd.Series:
    """The features (binary) of a batch of image files' bytes; ``origins`` name them in errors (a path column)."""
    names = _origins(origins, len(contents), fallback)
    return pd.Series([to_features(decode_file(c, o, spec.convert_channels), o, spec) for c, o in zip(contents, names)],
                     dtype=object)


def array_batch(values: pd.Series, origins: pd.Series | None, spec: FeatureSpec, layout: str, pixel_range: str,
                fallback: str) -> pd.Series:
    """The features (binary) of a batch of arrays in ``layout`` with numbers in ``pixel_range``."""
    names = _origins(origins, len(values), fallback)
    return pd.Series([to_features(from_array(v, o, layout, spec.size, pixel_range), o, spec)
                      for v, o in zip(values, names)], dtype=object)

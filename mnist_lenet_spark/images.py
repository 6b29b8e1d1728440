"""Your own images as the estimator's features column: ``image_features`` turns a column of Spark's image data
source (``spark.read.format("image")``), of image files (``spark.read.format("binaryFile")``: PNG, JPEG, ...) or of
arrays of numbers in a declared layout into C x H x W uint8 bytes, channel-major, the features ``NetworkClassifier``
reads. The work runs on the executors, in Arrow batches (``executor.images``); nothing is collected.
"""
from __future__ import annotations

import pandas as pd

from mnist_lenet_spark.data import DataError
from mnist_lenet_spark.executor import images, rows

IMAGE_FIELDS = ("origin", "height", "width", "nChannels", "mode", "data")  # Spark's image struct


def _kind(field_type, input_col: str) -> tuple[str, int]:
    """('image' | 'file' | 'array', array depth) of the input column's type; DataError for any other type."""
    from pyspark.sql.types import ArrayType, BinaryType, NumericType, StructType
    if isinstance(field_type, StructType) and set(IMAGE_FIELDS) <= set(field_type.fieldNames()):
        return "image", 0
    if isinstance(field_type, BinaryType):
        return "file", 0
    depth, inner = 0, field_type
    while isinstance(inner, ArrayType):
        depth, inner = depth + 1, inner.elementType
    if depth and isinstance(inner, NumericType):
        return "array", depth
    raise DataError(f"column '{input_col}' has type {field_type.simpleString()}; expected Spark's image struct "
                    f"(format 'image'), binary file content (format 'binaryFile') or an array of numbers")


def _size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        height, width = (int(v) for v in size)
        ok = (height, width) == tuple(size) and height > 0 and width > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"size must be (height, width) in pixels, two positive whole numbers, or None; got {size!r}")
    return height, width


def image_features(df, input_col: str = "image", output_col: str = "features", size=None, channels: int = 1,
                   channel_order: str = "rgb", resize: bool = False, convert_channels: bool = False,
                   layout: str | None = None, pixel_range: str | None = None, origin_col: str | None = None):
    """``df`` with ``output_col`` holding each image of ``input_col`` as C x H x W uint8 bytes, channel-major (the
    features of ``NetworkClassifier``; set its ``imageShape`` to ``[channels, H, W]`` when that is not the model's
    own), computed on the executors; the images are read when an action (``fit``, ``transform``, ``write``) runs.

    input_col : Spark's image struct (``spark.read.format("image")``: BGR(A), channels-last, any size, 1, 3 or 4
        channels), an image file's bytes (``spark.read.format("binaryFile")``'s ``content``: PNG, JPEG or any format
        Pillow reads, 8 bits a channel), or an array of numbers in ``layout``.
    output_col : the binary column to add (replaced if it exists).
    size : (H, W) of every image; an image of another size is refused unless ``resize``. None: each image keeps its
        own size (they must then all match the estimator's ``imageShape``). A flat array needs it.
    channels : 1 (grayscale) or 3 (colour). An image with another channel count (RGB, RGBA, grayscale, ...) is
        refused unless ``convert_channels``.
    channel_order : 'rgb' or 'bgr': the order of a 3-channel image's colours in the features. Spark's image struct
        is reordered from BGR; files are decoded as RGB; an array's channels are taken to be in this order already.
    resize : resize an image of another size to ``size`` (Pillow, bilinear; the aspect ratio is not kept).
    convert_channels : convert another channel count: colour to grayscale by ITU-R 601-2 luma (Pillow's
        ``convert("L")``), grayscale to RGB by copying, alpha dropped (not composited); also CMYK and other colour
        spaces to RGB.
    layout : an array column's layout, which it must declare: 'HWC' (channels-last), 'CHW' (channel-major) or 'HW'
        (one channel); flat (H x W x C numbers, H and W from ``size``) or nested to match. Only for arrays.
    pixel_range : an array's numbers: '0..255' (default: whole numbers) or '0..1' (multiples of 1/255); never
        rounded. Only for arrays: image files and Spark's images hold 8-bit pixels.
    origin_col : a column naming each row in error messages. Default: the image struct's ``origin``, else a
        ``path`` column (``binaryFile`` has one) when there is one.

    Raises ValueError for an argument out of its range, or ``layout``/``pixel_range`` given for a column that is not
    an array, or missing for one that is; DataError when ``input_col`` or ``origin_col`` is missing, or of a type not
    listed above. From the task, when an action runs: ``executor.images.ImageError`` for an image whose size or
    channel count differs from the asked ones without ``resize``/``convert_channels``, or that cannot be decoded; one
    line naming the image's path or origin and the problem (``fit`` raises it on the driver as a DataError).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    size = _size(size)
    if channels not in images.CHANNELS:
        raise ValueError(f"channels must be 1 (grayscale) or 3 (colour), got {channels!r}")
    if channel_order not in images.CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    for name, value in (("resize", resize), ("convert_channels", convert_channels)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if resize and size is None:
        raise ValueError("resize=True needs size=(height, width) to resize to")
    fields = {f.name: f.dataType for f in df.schema.fields}
    for name, what in ((input_col, "input_col"), (origin_col, "origin_col")):
        if name is not None and name not in fields:
            raise DataError(f"column '{name}' ({what}) not found; the DataFrame has {', '.join(fields) or 'none'}")
    kind, depth = _kind(fields[input_col], input_col)
    if kind != "array":
        for name, value in (("layout", layout), ("pixel_range", pixel_range)):
            if value is not None:
                raise ValueError(f"{name} is for array columns; column '{input_col}' holds "
                                 f"{'Spark images (BGR, channels-last)' if kind == 'image' else 'image files'}, "
                                 f"whose layout and 8-bit range are known")
    else:
        if layout not in images.LAYOUTS:
            raise ValueError(f"layout: an array column must declare its layout, one of "
                             f"{', '.join(images.LAYOUTS)}; got {layout!r}")
        pixel_range = rows.check_pixel_range("0..255" if pixel_range is None else pixel_range)
        if depth not in (1, len(layout)):
            raise DataError(f"column '{input_col}' is an array nested {depth} deep; layout {layout} needs a flat "
                            f"array or one nested {len(layout)} deep")
        if depth == 1 and size is None:
            raise ValueError(f"size: a flat array column ('{input_col}') needs size=(height, width) to be read as "
                             f"{layout}")
    spec = images.FeatureSpec(size, channels, channel_order, resize, convert_channels)
    fallback = f"in column '{input_col}'"
    if origin_col is None and kind == "file" and "path" in fields:
        origin_col = "path"
    origin = F.col(origin_col).cast("string") if origin_col else F.lit(None).cast("string")
    if kind == "image":
        column = F.col(input_col)
        if origin_col:  # the named column, not the struct's own origin
            column = F.struct(*[origin.alias("origin") if f == "origin" else F.col(f"{input_col}.{f}")
                                for f in IMAGE_FIELDS])

        @pandas_udf("binary")
        def from_images(structs: pd.DataFrame) -> pd.Series:
            return images.image_struct_batch(structs, spec)

        features = from_images(column)
    elif kind == "file":
        @pandas_udf("binary")
        def from_files(contents: pd.Series, origins: pd.Series) -> pd.Series:
            return images.file_batch(contents, origins, spec, fallback)

        features = from_files(F.col(input_col), origin)
    else:
        @pandas_udf("binary")
        def from_arrays(values: pd.Series, origins: pd.Series) -> pd.Series:
            return images.array_batch(values, origins, spec, layout, pixel_range, fallback)

        features = from_arrays(F.col(input_col), origin)
    return df.withColumn(output_col, features)

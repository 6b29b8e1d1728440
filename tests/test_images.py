"""A user's own images as features (``mnist_lenet_spark.images.image_features``): PNG files written here with
Pillow, read through Spark's image data source and through binaryFile, and channels-last arrays; the features
equal the pixels exactly, a network fits and predicts on them, and what is refused is refused in one line."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mnist_lenet_spark.data import DataError
from mnist_lenet_spark.executor import images as executor_images
from mnist_lenet_spark.images import image_features
from mnist_lenet_spark.ml import NetworkClassifier

COUNT = 40


def channel_major(pixels):
    """(H, W) or (H, W, C) -> C x H x W bytes."""
    pixels = pixels.reshape(*pixels.shape[:2], -1)  # (H, W, C)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)).tobytes()  # (C, H, W)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, mnist):
    """mnist/label=K/NN.png: 40 grayscale 28 x 28 MNIST images (the folder names give Spark a label column);
    colour/: RGB, RGBA and grayscale images whose channels differ; odd/: MNIST images and one 30 x 28."""
    root = tmp_path_factory.mktemp("images")
    originals = {}
    for i, (image, label) in enumerate(zip(mnist.train.images[:COUNT], mnist.train.labels[:COUNT])):
        path = root / "mnist" / f"label={label}" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        originals[f"{i:02d}.png"] = image  # (28, 28)
    rng = np.random.default_rng(0)
    (root / "colour").mkdir()
    colour = {"rgb.png": rng.integers(0, 256, (4, 6, 3), dtype=np.uint8),
              "rgba.png": rng.integers(0, 256, (4, 6, 4), dtype=np.uint8),
              "gray.png": rng.integers(0, 256, (4, 6), dtype=np.uint8)}
    for name, pixels in colour.items():
        Image.fromarray(pixels).save(root / "colour" / name)
    (root / "odd").mkdir()
    for i in range(4):
        Image.fromarray(mnist.train.images[i]).save(root / "odd" / f"{i}.png")
    odd = np.vstack([mnist.test.images[0], mnist.test.images[0][:2]])  # (30, 28)
    Image.fromarray(odd).save(root / "odd" / "tall.png")
    return root, originals, colour, odd


def read(spark, source, folder):
    if source == "image":
        return spark.read.format("image").load(str(folder)), "image"
    return spark.read.format("binaryFile").option("pathGlobFilter", "*.png").load(str(folder)), "content"


def network_from(df, column="features"):
    """{file name: features} of a DataFrame with a path or image.origin column."""
    origin = "image.origin" if "image" in df.columns else "path"
    return {row[0].rsplit("/", 1)[-1]: row[1] for row in df.select(origin, column).collect()}


@pytest.mark.parametrize("source", ["image", "binaryFile"])
def test_grayscale_features_equal_the_png_pixels(spark, folders, mnist, source):
    root, originals, _, _ = folders
    df, column = read(spark, source, root / "mnist")
    out = image_features(df, column, size=(28, 28), channels=1)
    got = network_from(out)
    assert sorted(got) == sorted(originals)
    assert all(got[name] == originals[name].tobytes() for name in originals)
    labels = network_from(out, "label")  # from the folder names label=K
    assert labels == {f"{i:02d}.png": int(y) for i, y in enumerate(mnist.train.labels[:COUNT])}


@pytest.mark.parametrize("source", ["image", "binaryFile"])
def test_colour_channel_order_layout_and_explicit_conversions(spark, folders, source):
    """Spark's struct is BGR and channels-last; PNG decodes as RGB: both give the same channel-major features,
    in the asked order; alpha and colour only go where convert_channels says."""
    root, _, colour, _ = folders
    df, column = read(spark, source, root / "colour")
    rgb, rgba, gray = colour["rgb.png"], colour["rgba.png"], colour["gray.png"]  # (4, 6, 3), (4, 6, 4), (4, 6)
    colour_only = df.filter((df["path"] if source == "binaryFile" else df["image.origin"]).endswith("/rgb.png"))
    got = network_from(image_features(colour_only, column, channels=3))
    assert got == {"rgb.png": channel_major(rgb)}
    assert network_from(image_features(colour_only, column, channels=3, channel_order="bgr")) == \
        {"rgb.png": channel_major(rgb[:, :, ::-1])}
    converted = network_from(image_features(df, column, channels=3, convert_channels=True))
    assert converted == {"rgb.png": channel_major(rgb), "rgba.png": channel_major(rgba[:, :, :3]),
                         "gray.png": channel_major(np.repeat(gray[:, :, np.newaxis], 3, axis=2))}
    luma = network_from(image_features(df, column, channels=1, convert_channels=True))
    assert luma["rgb.png"] == np.asarray(Image.fromarray(rgb).convert("L")).tobytes()
    assert luma["gray.png"] == gray.tobytes()


@pytest.mark.parametrize("train_on, predict_on", [("image", "binaryFile"), ("binaryFile", "image")])
def test_fit_and_transform_on_the_image_source_and_binary_files(spark, folders, train_on, predict_on):
    root, originals, _, _ = folders
    train = image_features(*read(spark, train_on, root / "mnist"), size=(28, 28))
    model = NetworkClassifier(workers=2, batchSize=8, epochs=2, maxSteps=5, seed=1).fit(train)  # 3 steps an epoch
    assert len(model.summary.history) == 5
    predictions = model.transform(image_features(*read(spark, predict_on, root / "mnist"), size=(28, 28)))
    assert "prediction" in predictions.columns
    got = network_from(predictions, "prediction")
    assert len(got) == predictions.count() == COUNT
    names = sorted(originals)
    assert [got[name] for name in names] == model.predict(np.stack([originals[name] for name in names])).tolist()


@pytest.mark.parametrize("source", ["image", "binaryFile"])
def test_a_size_not_asked_for_is_refused_in_one_line_naming_the_file(spark, folders, source):
    root, _, _, odd = folders
    df, column = read(spark, source, root / "odd")
    df = df.withColumn("label", df[column].isNotNull().cast("int"))  # any label: the images are refused first
    with pytest.raises(DataError) as raised:
        NetworkClassifier(workers=2, batchSize=2, maxSteps=1).fit(image_features(df, column, size=(28, 28)))
    message = str(raised.value)
    assert "\n" not in message
    assert "tall.png" in message and "is 30 x 28 pixels (H x W), expected 28 x 28" in message
    assert "resize=True" in message
    resized = network_from(image_features(df, column, size=(28, 28), resize=True))
    assert resized["tall.png"] == np.asarray(Image.fromarray(odd).resize((28, 28), Image.Resampling.BILINEAR)).tobytes()
    assert resized["0.png"] == folders[1]["00.png"].tobytes()  # the right size: untouched


@pytest.mark.parametrize("source", ["image", "binaryFile"])
def test_a_channel_count_not_asked_for_is_refused_naming_the_file(spark, folders, source):
    from mnist_lenet_spark.cluster.task_errors import task_error
    root, _, _, _ = folders
    df, column = read(spark, source, root / "colour")
    df = df.filter((df["path"] if source == "binaryFile" else df["image.origin"]).endswith("/rgb.png"))
    with pytest.raises(Exception) as raised:
        image_features(df, column, channels=1).collect()
    line = task_error(raised.value)
    assert line.startswith("ImageError: image ") and "has 3 channels (RGB), expected 1" in line, line
    assert "rgb.png" in line and "convert_channels=True" in line


def test_channels_last_arrays_in_a_declared_layout_equal_channel_major_bytes(spark, folders):
    _, _, colour, _ = folders
    rgb = colour["rgb.png"]  # (4, 6, 3)
    rows = [(1, rgb.reshape(-1).tolist(), rgb.tolist(), rgb.transpose(2, 0, 1).tolist(),
             (rgb.reshape(-1) / 255.0).tolist())]
    df = spark.createDataFrame(rows, "id int, flat array<int>, nested array<array<array<int>>>, "
                                     "chw array<array<array<int>>>, scaled array<double>")
    df = image_features(df, "flat", "flat_hwc", size=(4, 6), channels=3, layout="HWC")
    df = image_features(df, "nested", "nested_hwc", channels=3, layout="HWC")
    df = image_features(df, "chw", "nested_chw", channels=3, layout="CHW")
    df = image_features(df, "flat", "flat_chw", size=(4, 6), channels=3, layout="CHW")
    df = image_features(df, "scaled", "scaled_hwc", size=(4, 6), channels=3, layout="HWC", pixel_range="0..1")
    row = df.first()  # one job for the five
    expected = channel_major(rgb)
    assert row["flat_hwc"] == row["nested_hwc"] == row["nested_chw"] == row["scaled_hwc"] == expected
    assert row["flat_chw"] == rgb.reshape(-1).tobytes()  # read as channel-major, it stays in that order
    with pytest.raises(ValueError, match="layout: an array column must declare its layout"):
        image_features(df, "nested", channels=3)
    with pytest.raises(Exception) as raised:  # 0..1 values read as 0..255: not whole numbers, refused
        image_features(df, "scaled", "f", size=(4, 6), channels=3, layout="HWC", origin_col="id").collect()
    from mnist_lenet_spark.cluster.task_errors import task_error
    line = task_error(raised.value)
    assert line.startswith("ImageError: image 1: has a value that is not a whole number"), line
    assert "pixel_range='0..1'" in line


def test_arguments_are_checked_on_the_driver(spark, folders):
    root, _, _, _ = folders
    df, _ = read(spark, "image", root / "colour")
    with pytest.raises(ValueError, match="channels must be 1"):
        image_features(df, channels=4)
    with pytest.raises(ValueError, match="size must be"):
        image_features(df, size=(28,))
    with pytest.raises(ValueError, match="resize=True needs size"):
        image_features(df, resize=True)
    with pytest.raises(ValueError, match="layout is for array columns"):
        image_features(df, layout="HWC")
    with pytest.raises(DataError, match="column 'picture' .input_col. not found"):
        image_features(df, "picture")
    with pytest.raises(DataError, match="column 'height' has type int; expected Spark's image struct"):
        image_features(df.select("image.height"), "height")


def test_to_features_converts_only_what_it_is_asked_to():
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)  # (H, W, RGBA)
    spec = executor_images.FeatureSpec(size=None, channels=3)
    with pytest.raises(executor_images.ImageError, match="^image x.png: has 4 channels .RGBA., expected 3; pass "
                                                         "convert_channels=True to convert it .alpha dropped.$"):
        executor_images.to_features(pixels, "x.png", spec)
    spec = executor_images.FeatureSpec(size=None, channels=3, convert_channels=True)
    assert executor_images.to_features(pixels, "x.png", spec) == channel_major(pixels[:, :, :3])
    with pytest.raises(executor_images.ImageError, match="cannot be decoded"):
        executor_images.decode_file(b"not an image", "y.png")


def test_a_jpeg_decodes_as_pillow_reads_it(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=90)
    content = (tmp_path / "photo.jpg").read_bytes()
    pixels = executor_images.decode_file(content, "photo.jpg")  # (H, W, C)
    assert pixels.shape == (8, 10, 3)
    assert np.array_equal(pixels, np.asarray(Image.open(tmp_path / "photo.jpg")))
    spec = executor_images.FeatureSpec(size=(8, 10), channels=3, channel_order="bgr")
    assert executor_images.to_features(pixels, "photo.jpg", spec) == channel_major(pixels[:, :, ::-1])


def png_16_bit(pixels, colour_type):
    """A PNG of 16 bits a sample (Pillow writes none): big-endian (H, W, C) samples, colour type 0/2/4/6."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    height, width = pixels.shape[:2]
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))  # filter 0 on each line
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("colour_type, channels", [(0, 1), (2, 3), (6, 4)])
def test_16_bit_files_are_refused_not_cut_to_8_bits(colour_type, channels):
    samples = np.arange(2 * 3 * channels, dtype=np.uint16).reshape(2, 3, channels) * 1000  # (H, W, C)
    with pytest.raises(executor_images.ImageError, match="^image deep.png: has 16 bits a channel"):
        executor_images.decode_file(png_16_bit(samples, colour_type), "deep.png")

import gzip

import numpy as np
import pytest

from mnist_lenet_spark import data
from mnist_lenet_spark.data import DataError


def idx_images(count, rows=28, cols=28, magic=2051, body=None):
    head = magic.to_bytes(4, "big") + count.to_bytes(4, "big") + rows.to_bytes(4, "big") + cols.to_bytes(4, "big")
    return head + (bytes(count * rows * cols) if body is None else body)


def idx_labels(labels, magic=2049, count=None):
    return magic.to_bytes(4, "big") + (len(labels) if count is None else count).to_bytes(4, "big") + bytes(labels)


def write(tmp_path, name, raw, gz=False):
    p = tmp_path / name
    p.write_bytes(gzip.compress(raw) if gz else raw)
    return p


@pytest.mark.parametrize("gz", [False, True])
def test_reads_valid_idx_raw_and_gzip(tmp_path, gz):
    imgs = write(tmp_path, "i", idx_images(3, body=bytes(range(256)) * 9 + bytes(3 * 784 - 2304)), gz)
    labs = write(tmp_path, "l", idx_labels([1, 9, 0]), gz)
    split = data.read_idx_pair(imgs, labs)
    assert split.images.shape == (3, 28, 28) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int64 and list(split.labels) == [1, 9, 0]
    assert split.images[0, 0, 5] == 5


@pytest.mark.parametrize("raw,message", [
    (idx_images(2, body=bytes(1200)), "train-images-idx3-ubyte.gz: truncated: expected 1568 pixel bytes, found 1200"),
    (idx_images(1, magic=2049), "wrong magic number 2049, expected 2051"),
    (idx_images(1, rows=32, cols=32), "images are 32x32, expected 28x28"),
    (b"", "truncated header"),
    (idx_images(1) + b"x", "trailing data"),
])
def test_bad_image_files(tmp_path, raw, message):
    p = write(tmp_path, "train-images-idx3-ubyte.gz", raw, gz=True)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        data.read_idx_images(p)


def test_bad_label_files(tmp_path):
    with pytest.raises(DataError, match="label 10 at item 1 is outside 0..9"):
        data.read_idx_labels(write(tmp_path, "l", idx_labels([1, 10])))
    with pytest.raises(DataError, match="truncated: expected 5 label bytes, found 2"):
        data.read_idx_labels(write(tmp_path, "l", idx_labels([1, 2], count=5)))


def test_count_mismatch_names_both_files(tmp_path):
    imgs = write(tmp_path, "imgs", idx_images(3))
    labs = write(tmp_path, "labs", idx_labels([1, 2]))
    with pytest.raises(DataError, match="imgs has 3 images but labs has 2 labels"):
        data.read_idx_pair(imgs, labs)


def test_missing_file_and_corrupt_gzip(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.read_idx_images(tmp_path / "nope")
    with pytest.raises(DataError, match="corrupt gzip"):
        data.read_idx_images(write(tmp_path, "x.gz", gzip.compress(idx_images(1))[:-20]))
    assert issubclass(DataError, ValueError)


def test_csv_reader(tmp_path):
    row = lambda label, v: ",".join([str(label)] + [str(v)] * 784)
    p = tmp_path / "m.csv"
    p.write_text(row(7, 255) + "\n" + row(0, 0) + "\n")
    split = data.read_csv(p)
    assert list(split.labels) == [7, 0] and split.images[0].max() == 255 and split.images.shape == (2, 28, 28)
    for text, message in [("", "empty file"), ("1,2,3", "expected 785 values"),
                          (row(11, 0), "label 11"), (row(1, 256), "0..255"),
                          (row(1, 0).replace("0", "x", 1), "not a list of integers")]:
        p.write_text(text)
        with pytest.raises(DataError, match=message):
            data.read_csv(p)


def test_bundled_mnist_and_validation_split():
    m = data.load_mnist()
    assert m.train.images.shape == (55000, 28, 28) and m.validation.images.shape == (5000, 28, 28)
    assert m.test.images.shape == (10000, 28, 28)
    assert set(np.unique(m.test.labels)) == set(range(10))
    full = data.read_idx_labels(data.BUNDLED_DIR / data.FILES["train"][1])
    assert np.array_equal(m.validation.labels, full[:5000]) and np.array_equal(m.train.labels, full[5000:])


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load_mnist(tmp_path / "nowhere")


def test_scale_batch():
    x = data.scale_batch(np.array([[[0] * 28] * 28, [[255] * 28] * 28], np.uint8))
    assert x.shape == (2, 1, 28, 28) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == pytest.approx(1.0)

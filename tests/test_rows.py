"""Features to pixels, on the executors' side: values are checked against their declared range, never rounded."""
import numpy as np
import pytest

from mnist_lenet_spark.executor import rows

PIXELS = 6


@pytest.mark.parametrize("values,pixel_range,expected", [
    ([0, 1, 2, 128, 254, 255], "0..255", [0, 1, 2, 128, 254, 255]),
    ([0.0, 1 / 255, 2 / 255, 128 / 255, 254 / 255, 1.0], "0..1", [0, 1, 2, 128, 254, 255]),
    (np.array([0, 1, 2, 128, 254, 255], np.float32) / np.float32(255), "0..1", [0, 1, 2, 128, 254, 255]),
    (bytes([0, 1, 0, 1, 1, 0]), "0..1", [0, 255, 0, 255, 255, 0]),
    (bytes([0, 7, 0, 200, 1, 0]), "0..255", [0, 7, 0, 200, 1, 0]),
])
def test_values_in_their_declared_range_are_the_same_8_bit_pixels(values, pixel_range, expected):
    pixels = rows.row_pixels(values if isinstance(values, bytes) else list(values), PIXELS, pixel_range)
    assert pixels.dtype == np.uint8 and pixels.tolist() == expected


@pytest.mark.parametrize("values,pixel_range,problem", [
    # pixels scaled to 0..1 given as 0..255: refused, not rounded to 0 or 1
    ([0.0, 0.2, 0.5, 0.9, 1.0, 0.0], "0..255", "not a whole number (0.2 at position 1); pixels scaled to 0..1 need"),
    ([0, 1, 2, 127.5, 3, 4], "0..255", "not a whole number (127.5 at position 3)"),
    ([0, 1, 2, 256, 3, 4], "0..255", "outside 0..255"),
    ([0, -1, 2, 25, 3, 4], "0..255", "outside 0..255"),
    ([0, 1, 2, float("nan"), 3, 4], "0..255", "outside 0..255"),
    ([0, 0.3, 0.5, 0.1, 1, 0], "0..1", "not a multiple of 1/255 (0.3 at position 1)"),
    ([0, 1, 2, 255, 3, 4], "0..1", "outside 0..1 (min 0.0, max 255.0) (pixels 0..255 need pixelRange '0..255')"),
    (bytes([0, 7, 0, 200, 1, 0]), "0..1", "bytes outside 0..1 (max 200)"),
    ([0, 1, 2], "0..255", "has 3 values, expected 6"),
])
def test_values_the_8_bit_pixels_cannot_hold_are_named_problems(values, pixel_range, problem):
    result = rows.row_pixels(values, PIXELS, pixel_range)
    assert isinstance(result, str) and problem in result


def test_an_unknown_pixel_range_is_refused():
    with pytest.raises(ValueError, match="pixel range must be one of 0..255, 0..1, got '0..100'"):
        rows.check_pixel_range("0..100")

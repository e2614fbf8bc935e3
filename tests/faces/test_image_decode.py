"""Image cells to 8-bit RGB: decoded bytes and numpy arrays alike."""

import numpy as np
import pytest

from facefoundry.faces.image_decode import decode_image, decode_with_reason


def test_an_rgb_uint8_array_is_returned_as_is():
    pixels = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    out = decode_image(pixels)
    assert out is not None and out.dtype == np.uint8 and (out == pixels).all()


def test_grey_and_rgba_arrays_become_rgb():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert (decode_image(grey) == np.repeat(grey[:, :, None], 3, axis=2)).all()
    rgba = np.zeros((2, 2, 4), np.uint8)
    assert decode_image(rgba).shape == (2, 2, 3)
    assert (decode_image(np.full((2, 2), 65535, np.uint16)) == 255).all()  # 16-bit grey scaled, not clipped


@pytest.mark.parametrize("array", [np.zeros((2, 2, 3), np.float32), np.zeros((2, 2, 2), np.uint8),
                                   np.zeros(4, np.uint8)])
def test_other_arrays_are_refused_with_a_reason(array):
    image, why = decode_with_reason(array)
    assert image is None and "expected H x W x 3 uint8" in why

"""ferclean.faces.png: stored PNGs must decode to the same pixels in OpenCV and Pillow."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from ferclean.faces.png import encode_crop, png_deflated, png_stored


@pytest.mark.parametrize("shape", [(64, 64), (7, 13), (5, 9, 3), (4, 6, 4)])
def test_png_stored_round_trip(shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    data = png_stored(img)
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back, img)  # OpenCV gives BGR(A) back, as it was given
    pil = np.asarray(Image.open(io.BytesIO(data)))
    expected = img if img.ndim == 2 else (img[:, :, ::-1] if shape[2] == 3 else img[:, :, [2, 1, 0, 3]])
    np.testing.assert_array_equal(pil, expected)  # Pillow reads RGB(A)
    same = cv2.imdecode(np.frombuffer(png_deflated(img), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(same, back)  # the two flavours hold the same pixels
    assert encode_crop(img, "stored") == data


def test_png_stored_rejects_bad_input():
    with pytest.raises(ValueError):
        png_stored(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        png_stored(np.zeros((4, 4, 2), np.uint8))

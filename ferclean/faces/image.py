"""Image preparation shared by the detectors, the quality measures and fastlm (cv2 + NumPy only).

A leaf module: backends, quality, fastlm and fastlm_net import it, it imports none of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3|4) BGR(A) uint8 -> (H, W) uint8."""
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[:, :, 0]
    code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    return cv2.cvtColor(image, code)


def to_batch(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """uint8 images (H, W) grey or (H, W, 3) BGR, any sizes -> (N, size, size) uint8 grey."""
    batch = np.empty((len(images), size, size), np.uint8)
    for i, img in enumerate(images):
        g = img if img.ndim == 2 else to_gray(img)
        if g.shape != (size, size):
            g = cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA if max(g.shape) > size else cv2.INTER_LINEAR)
        batch[i] = g
    return batch

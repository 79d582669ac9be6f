"""Image-quality measurements of an aligned crop and the `quality_flags` they raise."""

from __future__ import annotations

import math

import cv2
import numpy as np

from ferclean.faces.config import QualityThresholds
from ferclean.faces.image import to_gray
from ferclean.faces.turned import fit_beyond_frontal
from ferclean.flags import QUALITY_FLAGS as FLAGS  # noqa: F401  (the one list, ferclean.flags; re-exported)


def crop_stats(crop: np.ndarray) -> tuple[float, float, float]:
    """(blur, brightness, contrast) of a crop: variance of the Laplacian (grey levels^2), mean and
    standard deviation of the grey levels (0-255)."""
    g = to_gray(crop)
    # int16 holds the 4-neighbour Laplacian of uint8 exactly (|value| <= 1020) and is ~2x faster
    # than float64; meanStdDev gives the population std, so std**2 is the same variance.
    _, lap_sd = cv2.meanStdDev(cv2.Laplacian(g, cv2.CV_16S))
    mean, std = cv2.meanStdDev(g)
    return float(lap_sd[0, 0]) ** 2, float(mean[0, 0]), float(std[0, 0])


def face_size_px(bbox: np.ndarray) -> float:
    """sqrt(width * height) of an (x, y, w, h) box, in px."""
    return float(math.sqrt(max(bbox[2], 0.0) * max(bbox[3], 0.0)))


def quality_flags(
    *,
    face_px: float,
    blur: float,
    yaw: float,
    pitch: float,
    n_faces: int,
    detector: str,
    thresholds: QualityThresholds,
    side_balance: float = float("nan"),
) -> list[str]:
    """Flags (a sublist of FLAGS, in FLAGS order) for one face; NaN angles raise no pose flag.

    `side_balance`: `ferclean.faces.turned.side_balance` of the face's fit (NaN = not measured);
    with an MMOD `detector` it can raise extreme_pose on its own (a profile whose fit collapsed).
    """
    flags = []
    if face_px < thresholds.tiny_px:
        flags.append("tiny")
    if blur < thresholds.blur_min:
        flags.append("blurry")
    if (not math.isnan(yaw) and abs(yaw) > thresholds.max_abs_yaw_deg) or (
        not math.isnan(pitch) and abs(pitch) > thresholds.max_abs_pitch_deg
    ) or fit_beyond_frontal(detector, side_balance, thresholds.min_side_balance):
        flags.append("extreme_pose")
    if n_faces > 1:
        flags.append("multiple_faces")
    if detector == "full_frame":
        flags.append("full_frame")
    return flags

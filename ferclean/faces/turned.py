"""Is a face turned beyond what the frontal 68-point model can fit? A label-free check.

On a profile (yaw ~75-90 deg) dlib's HOG passes find nothing, dlib's MMOD CNN finds the face, and
the 68-point shape predictor, trained on near-frontal faces, collapses to a frontal-looking shape
centred in the box: the pose read from it comes out at 10-35 deg yaw, so the yaw rule of
`extreme_pose` misses it (benchmarks/results/face_recall_profile.md). The collapsed shape itself
looks like a face (fit residual 0.17-0.33, lower than a real 30 deg turn's), so the landmarks alone
cannot tell; the image under them can: one of the two fitted eyes lands on the cheek or the
background, where there is little detail.

:func:`eye_texture_ratio` measures that: the mean gradient magnitude in a square around the weaker
eye divided by the one around the stronger eye (1 = both eyes equally detailed, 0 = one eye on a
flat area). It is checked only for faces found by the MMOD passes (:func:`found_by_mmod`), where
collapsed fits occur; alone, on every face, it is not specific enough (7 % of FER2013 train crops
fall under 0.5, side light and low resolution). Measured and chosen in
benchmarks/results/face_turned_fer.md and face_recall_profile.md.
"""

from __future__ import annotations

import cv2
import numpy as np

from ferclean.faces.image import to_gray

#: detector paths of dlib's MMOD CNN (ferclean.faces.recall): the only paths that find profiles
MMOD_PATHS = ("mmod", "mmod_rotated", "mmod_large")


def found_by_mmod(detector: str) -> bool:
    """Whether `detector` (a faces row's path) is one of the MMOD passes."""
    return detector in MMOD_PATHS


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """float32 (H, W) Sobel gradient magnitude of a grey or BGR uint8 image."""
    g = to_gray(image).astype(np.float32)
    return cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))


def patch_mean(values: np.ndarray, centre: np.ndarray, radius: int) -> float:
    """Mean of `values` (H, W) over the square of half-side `radius` px around `centre` (x, y),
    rounded to the pixel grid and clipped to the image; NaN when no pixel of it is inside."""
    h, w = values.shape
    cx, cy = (int(v) for v in np.round(np.asarray(centre, np.float64)))
    patch = values[max(0, cy - radius) : max(0, cy + radius + 1), max(0, cx - radius) : max(0, cx + radius + 1)]
    return float(patch.mean()) if patch.size else float("nan")


def eye_texture_ratio(grad: np.ndarray, lm68: np.ndarray, radius_share: float = 0.3) -> float:
    """min / max of the mean gradient magnitude (`grad`, (H, W)) in squares around the two fitted
    eye centres (means of points 36-41 and 42-47 of `lm68`, px of `grad`), of half-side
    `radius_share` x the eye distance (at least 2 px). 1 when both eyes are equally detailed; NaN
    when it cannot be measured."""
    lm = np.asarray(lm68, np.float64)
    eyes = lm[36:42].mean(0), lm[42:48].mean(0)
    r = max(2, int(radius_share * float(np.linalg.norm(eyes[1] - eyes[0]))))
    e = [patch_mean(grad, c, r) for c in eyes]
    if not np.isfinite(e).all() or max(e) <= 0:
        return float("nan")
    return min(e) / max(e)


def fit_beyond_frontal(detector: str, eye_ratio: float, min_eye_ratio: float | None) -> bool:
    """The 68-point fit is unreliable because the face is turned further than the frontal model
    fits: found by MMOD and one fitted eye on a flat area (eye_ratio < min_eye_ratio). NaN ratios
    and `min_eye_ratio = None` (check off) never count."""
    if min_eye_ratio is None or not found_by_mmod(detector) or np.isnan(eye_ratio):
        return False
    return eye_ratio < min_eye_ratio

"""Is a face turned beyond what the frontal 68-point model can fit? A label-free check.

On a profile (yaw ~75-90 deg) dlib's HOG passes find nothing, dlib's MMOD CNN finds the face, and
the 68-point shape predictor, trained on near-frontal faces, collapses to a frontal-looking shape
centred in the box: the pose read from it comes out at 10-35 deg yaw, so the yaw rule of
`extreme_pose` misses it (benchmarks/results/face_recall_profile.md). The collapsed shape itself
looks like a face (fit residual 0.17-0.33 half eye distances, lower than a real 30 deg turn's), so
the landmarks alone cannot tell; the image under them can: the half of the fit away from the
nose lands on the cheek or the background, where there is little detail.

:func:`side_balance` measures that: the product of two min / max ratios of image detail (gradient
magnitude) between the fit's two sides, at the eyes (:func:`eye_texture_ratio`) and along the jaw
contour (:func:`contour_edge_ratio`): ~1 when both sides are equally detailed, ~0 when one side
is flat. It is checked only for faces found by the MMOD passes (:func:`found_by_mmod`), where
collapsed fits occur: alone, on every face, it is not specific (several % of FER2013 crops are
lopsided under side light or at 48 px). Chosen and measured in benchmarks/results/face_turned.md.
"""

from __future__ import annotations

import cv2
import numpy as np

from ferclean.faces.image import to_gray

#: detector paths of dlib's MMOD CNN (ferclean.faces.recall): the only paths that find profiles
MMOD_PATHS = ("mmod", "mmod_rotated", "mmod_large")
#: jaw points of the image-left and image-right halves of the contour (the chin, 8, in both)
JAW_LEFT, JAW_RIGHT = np.arange(0, 9), np.arange(8, 17)


def found_by_mmod(detector: str) -> bool:
    """Whether `detector` (a faces row's path) is one of the MMOD passes."""
    return detector in MMOD_PATHS


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """float32 (H, W) Sobel gradient magnitude of a grey or BGR uint8 image."""
    g = to_gray(image).astype(np.float32)
    return cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))


def _ratio(a: float, b: float) -> float:
    """min / max of two non-negative numbers; NaN when either is NaN or both are 0."""
    if not (np.isfinite(a) and np.isfinite(b)) or max(a, b) <= 0:
        return float("nan")
    return min(a, b) / max(a, b)


def patch_mean(values: np.ndarray, centre: np.ndarray, radius: int) -> float:
    """Mean of `values` (H, W) over the square of half-side `radius` px around `centre` (x, y),
    rounded to the pixel grid and clipped to the image; NaN when no pixel of it is inside."""
    cx, cy = (int(v) for v in np.round(np.asarray(centre, np.float64)))
    patch = values[max(0, cy - radius) : max(0, cy + radius + 1), max(0, cx - radius) : max(0, cx + radius + 1)]
    return float(patch.mean()) if patch.size else float("nan")


def eye_texture_ratio(grad: np.ndarray, lm68: np.ndarray, radius_share: float = 0.3) -> float:
    """min / max of the mean of `grad` ((H, W) gradient magnitude) in squares around the two fitted
    eye centres (means of points 36-41 and 42-47 of `lm68`, px of `grad`), of half-side
    `radius_share` x the eye distance (at least 2 px). NaN when it cannot be measured."""
    lm = np.asarray(lm68, np.float64)
    eyes = lm[36:42].mean(0), lm[42:48].mean(0)
    r = max(2, int(radius_share * float(np.linalg.norm(eyes[1] - eyes[0]))))
    return _ratio(patch_mean(grad, eyes[0], r), patch_mean(grad, eyes[1], r))


def contour_edge_ratio(grad: np.ndarray, lm68: np.ndarray, sigma_px: float = 2.0) -> float:
    """min / max of the mean of `grad`, smoothed by a Gaussian of `sigma_px`, at the jaw points of
    the image-left (0-8) and image-right (8-16) halves of the fitted contour. Points outside the
    image are left out; a half with none inside counts as 0 (no detail seen). NaN when both are 0."""
    h, w = grad.shape
    smooth = cv2.GaussianBlur(grad, (0, 0), sigma_px)
    p = np.round(np.asarray(lm68, np.float64)).astype(int)
    means = []
    for idx in (JAW_LEFT, JAW_RIGHT):
        q = p[idx]
        q = q[(q[:, 0] >= 0) & (q[:, 0] < w) & (q[:, 1] >= 0) & (q[:, 1] < h)]
        means.append(float(smooth[q[:, 1], q[:, 0]].mean()) if len(q) else 0.0)
    return _ratio(*means)


def side_balance(image: np.ndarray, lm68: np.ndarray) -> float:
    """eye_texture_ratio x contour_edge_ratio of the 68 points `lm68` fitted on `image` (px of
    `image`): ~1 when both sides of the fit hold as much detail, ~0 when one side is flat."""
    grad = gradient_magnitude(image)
    return eye_texture_ratio(grad, lm68) * contour_edge_ratio(grad, lm68)


def fit_beyond_frontal(detector: str, balance: float, min_balance: float | None) -> bool:
    """The 68-point fit is unreliable because the face is turned further than the frontal model
    fits: found by MMOD and one side of the fit on a flat area (side_balance < min_balance). NaN
    balances and `min_balance = None` (check off) never count."""
    if min_balance is None or not found_by_mmod(detector) or np.isnan(balance):
        return False
    return balance < min_balance

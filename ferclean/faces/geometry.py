"""Pure geometry for face alignment: 5-point template, similarity fit, point mapping, warping.

Points are float arrays of shape (n, 2) holding (x, y) in pixels. A 2x3 matrix `M` maps a point
p of the source image to `M[:, :2] @ p + M[:, 2]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Canonical 5 points for a 112x112 crop (left eye centre, right eye centre, nose tip, left mouth
#: corner, right mouth corner; "left" = image left). These are the widely used ArcFace/InsightFace
#: reference coordinates; other crop sizes scale them by size/112.
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def template5(size: int) -> np.ndarray:
    """The canonical 5 points for a `size` x `size` crop, shape (5, 2)."""
    return TEMPLATE_112 * (size / 112.0)


def landmarks5_from_68(lm68: np.ndarray) -> np.ndarray:
    """(68, 2) iBUG-68 points -> (5, 2): eye centres (mean of 36-41, 42-47), nose tip 30, mouth corners 48, 54."""
    lm68 = np.asarray(lm68, dtype=np.float64)
    if lm68.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {lm68.shape}")
    return np.stack([lm68[36:42].mean(0), lm68[42:48].mean(0), lm68[30], lm68[48], lm68[54]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) src -> dst.

    Umeyama (1991) closed form. `src`, `dst`: (n, 2), n >= 2. Returns the 2x3 matrix M with
    dst ~= src @ M[:, :2].T + M[:, 2].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (n>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("source points are degenerate (all equal)")
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def apply_affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Map (n, 2) points with a 2x3 matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ np.asarray(m, dtype=np.float64)[:, :2].T + np.asarray(m, dtype=np.float64)[:, 2]


def warp_crop(image: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """Warp `image` (H, W) or (H, W, C) with `m` into a `size` x `size` crop (black outside)."""
    return cv2.warpAffine(
        image, np.asarray(m, dtype=np.float64), (size, size), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )


def align_face(image: np.ndarray, lm68: np.ndarray, size: int = 112) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align one face: returns (crop (size, size[, C]), M (2, 3), 68 points in crop px (68, 2))."""
    m = similarity_transform(landmarks5_from_68(lm68), template5(size))
    return warp_crop(image, m, size), m, apply_affine(lm68, m)


def align_faces(
    images: Sequence[np.ndarray], landmarks68: Sequence[np.ndarray], size: int = 112
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Align many faces (one per image). Returns (crops, matrices (n, 2, 3), crop landmarks (n, 68, 2))."""
    if len(images) != len(landmarks68):
        raise ValueError("images and landmarks68 differ in length")
    crops, mats, pts = [], [], []
    for img, lm in zip(images, landmarks68, strict=True):
        c, m, p = align_face(img, lm, size)
        crops.append(c)
        mats.append(m)
        pts.append(p)
    return crops, np.asarray(mats).reshape(-1, 2, 3), np.asarray(pts).reshape(-1, 68, 2)

"""Face-likeness of crops that no detector confirmed: distance from face space + a rotated HOG check.

Pre-cropped collections (FER2013) give the faces stage nothing to detect with confidence: dlib
misses ~26 % of real FER faces (tilted, occluded, small) and fastlm never detects. Two classic
face-likeness cues separate the few non-faces among those rows from the many hard faces:

- **distance from face space** (DFFS, Turk & Pentland): each primary aligned crop, grey, resized
  to `side` x `side` and standardised, is projected on the first `k` principal components of
  crops whose face a detector confirmed; the mean squared residual is large for anything that
  is not an aligned face (`FaceSpace`);
- **rotated HOG**: dlib's frontal HOG detector is run on the source image upscaled to 144 px and
  rotated by a few angles; the best detection score over angles and positions (threshold -3,
  so a score always exists) is low for non-faces and for faces at any roll it does not cover
  (`rotated_hog_score`).

The face space is measured twice: on the aligned crop (which depends on where the landmark fit
put the eyes) and on the whole image (which does not). No cue is enough alone (each ranks
FER2013's two crowd-declared non-faces in the top ~3-9 % of undetected crops, among many
occluded or lying faces); `appearance_rank` averages their ranks over the undetected rows.
Pure NumPy and OpenCV except the HOG call.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

HOG_ANGLES = (-50.0, -25.0, 0.0, 25.0, 50.0)
HOG_SIDE = 144
HOG_FLOOR = -3.0  # adjust_threshold of the detector run: scores below are not reported


def crop_vectors(pngs: Sequence[bytes | None], side: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Decode PNG crops -> ((n, side*side) float32 standardised grey vectors, (n,) ok mask).

    Undecodable or missing crops get a zero vector and ok = False.
    """
    out = np.zeros((len(pngs), side * side), np.float32)
    ok = np.zeros(len(pngs), bool)
    for i, b in enumerate(pngs):
        if not b:
            continue
        g = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE)
        if g is None:
            continue
        v = cv2.resize(g, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32).reshape(-1)
        sd = float(v.std())
        out[i] = (v - v.mean()) / max(sd, 1.0)
        ok[i] = True
    return out, ok


class FaceSpace:
    """PCA face space: `fit` on face vectors (n, d), then `dffs` = mean squared residual per vector."""

    def __init__(self, k: int = 25):
        self.k = k
        self.mean: np.ndarray | None = None
        self.basis: np.ndarray | None = None  # (k, d)

    def fit(self, x: np.ndarray) -> FaceSpace:
        x = np.asarray(x, np.float64)
        if len(x) < 2:
            raise ValueError("FaceSpace.fit needs at least 2 vectors")
        self.mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.basis = vt[: min(self.k, len(vt))]
        return self

    def dffs(self, x: np.ndarray) -> np.ndarray:
        """(n,) mean squared distance of each vector from the fitted subspace."""
        if self.mean is None or self.basis is None:
            raise RuntimeError("FaceSpace is not fitted")
        c = np.asarray(x, np.float64) - self.mean
        return ((c - (c @ self.basis.T) @ self.basis) ** 2).mean(1)


@lru_cache(maxsize=1)
def hog_detector() -> object:
    """dlib's frontal HOG face detector (the faces stage's default detector), built once per process."""
    import dlib

    return dlib.get_frontal_face_detector()


def rotated_hog_score(image: np.ndarray, detector: object, angles: Sequence[float] = HOG_ANGLES,
                      side: int = HOG_SIDE) -> float:
    """Best dlib HOG detection score of `image` (uint8 grey or BGR) over rotations; HOG_FLOOR if none.

    `detector` is `hog_detector()` (dlib's frontal HOG detector). The image is resized so its longer side
    is `side` px (FER crops are 48 px; HOG needs ~80 px faces) and rotated about its centre.
    """
    g = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    h, w = g.shape
    s = side / max(h, w)
    g = cv2.resize(g, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_LINEAR)
    h, w = g.shape
    best = HOG_FLOOR
    for a in angles:
        r = g if a == 0 else cv2.warpAffine(g, cv2.getRotationMatrix2D((w / 2, h / 2), a, 1.0), (w, h),
                                            borderMode=cv2.BORDER_REFLECT)
        _, scores, _ = detector.run(r, 0, HOG_FLOOR)  # type: ignore[attr-defined]
        if len(scores):
            best = max(best, float(max(scores)))
    return best


def rank01(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (0 = smallest); ties share their average rank. Empty -> empty."""
    from scipy.stats import rankdata

    x = np.asarray(x, np.float64)
    if len(x) <= 1:
        return np.zeros(len(x))
    return (rankdata(x, method="average") - 1) / (len(x) - 1)


def image_vectors(paths: Sequence[str], side: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Like `crop_vectors` for image files (the whole image, not the aligned crop)."""
    out = np.zeros((len(paths), side * side), np.float32)
    ok = np.zeros(len(paths), bool)
    for i, p in enumerate(paths):
        g = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if g is None:
            continue
        v = cv2.resize(g, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32).reshape(-1)
        out[i] = (v - v.mean()) / max(float(v.std()), 1.0)
        ok[i] = True
    return out, ok


def image_dffs(paths: Sequence[str], space: FaceSpace, side: int = 24) -> np.ndarray:
    """`space.dffs` of each image file's vector (:func:`image_vectors`), NaN where the file cannot be read (a task:
    one chunk of paths, on any worker that sees the files)."""
    vecs, ok = image_vectors(paths, side)
    out = np.full(len(paths), np.nan)
    out[ok] = space.dffs(vecs[ok])
    return out


def appearance_rank(*unlikeness: np.ndarray) -> np.ndarray:
    """(n,) in [0, 1]: the rank of the mean rank of the cues, each (n,) with higher = less like a
    face (DFFS of the crop, DFFS of the image, minus the HOG score). NaN (not measured) counts as
    face-like."""
    ranks = [rank01(np.where(np.isnan(u), -np.inf, u)) for u in unlikeness]
    return rank01(np.mean(ranks, axis=0))


def appearance_evidence(rank: np.ndarray, top_fraction: float) -> np.ndarray:
    """(n,) in [0, 1]: 0 below the (1 - 2 q) rank, rising linearly to 1 at the top q (q = top_fraction)."""
    q = float(top_fraction)
    if q <= 0:
        return np.zeros(len(rank))
    return np.clip((np.asarray(rank, np.float64) - (1.0 - 2.0 * q)) / q, 0.0, 1.0)


__all__ = ["HOG_ANGLES", "FaceSpace", "appearance_evidence", "appearance_rank", "crop_vectors", "hog_detector",
           "image_vectors", "rank01", "rotated_hog_score"]

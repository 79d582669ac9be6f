"""Second chances before `no_face` (ferclean.faces.recall): view maths, the padded copy finding a
tight crop the HOG detector misses, the crop-fallback cues, and what the stage reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

from ferclean.contracts import load_contract
from ferclean.faces import (
    FacesConfig,
    analyze_image,
    get_backend,
    load_image,
    run_faces,
)
from ferclean.faces.backends import Detection
from ferclean.faces.geometry import apply_affine
from ferclean.faces.recall import (
    MEAN_SHAPE,
    View,
    box_iou,
    box_to_work,
    find_faces,
    fit_residual,
    looks_like_face_crop,
    padded_view,
    rotated_view,
    scaled_view,
)
from ferclean.runs import open_run
from ferclean.store import Store

FEAT_DATA = Path(next(iter(importlib.util.find_spec("feat").submodule_search_locations))) / "tests" / "data"


def test_views_map_points_there_and_back():
    img = np.zeros((90, 120), np.uint8)
    img[30, 80] = 255
    view = rotated_view(scaled_view(padded_view(img, 1 / 3, 10_000), 100), 30.0)
    p = apply_affine(np.array([[80.0, 30.0]]), view.to_view)[0]
    peak = np.unravel_index(np.argmax(cv2.GaussianBlur(view.image.astype(np.float32), (5, 5), 0)), view.image.shape)
    assert np.hypot(peak[1] - p[0], peak[0] - p[1]) < 1.5  # the marked pixel is where to_view says
    pts = np.array([[0.0, 0.0], [119.0, 89.0], [80.0, 30.0]])
    np.testing.assert_allclose(view.to_work(apply_affine(pts, view.to_view)), pts, atol=1e-9)
    x, y, w, h = box_to_work(padded_view(img, 1 / 3, 10_000).to_view, (40.0, 40.0, 20.0, 10.0))
    assert (x, y, w, h) == pytest.approx((0.0, 0.0, 20.0, 10.0))  # border = 120 / 3 = 40 px


def _tight_crop(shrink: float = 0.6, side: int = 300) -> np.ndarray:
    img = load_image(str(FEAT_DATA / "single_face.jpg"))
    x, y, w, h = get_backend("dlib").detect(img)[0].bbox
    cx, cy, s = x + w / 2, y + h / 2, w * shrink
    return cv2.resize(img[int(cy - s / 2) : int(cy + s / 2), int(cx - s / 2) : int(cx + s / 2)], (side, side))


def test_tight_crop_is_found_on_the_padded_copy():
    crop = _tight_crop()
    backend = get_backend("dlib")
    assert analyze_image(crop, backend, FacesConfig(second_chance=False)) == []  # what used to be no_face
    tried: list[str] = []
    recs = analyze_image(crop, backend, FacesConfig(), tried=tried)
    assert tried == ["dlib", "dlib_padded"] and len(recs) == 1
    r = recs[0]
    assert r["detector"] == "dlib_padded" and "full_frame" not in r["quality_flags"]
    lm = np.array(r["landmarks68"]).reshape(68, 2)
    eyes = np.stack([lm[36:42].mean(0), lm[42:48].mean(0)])
    assert (eyes > 0).all() and (eyes < 300).all() and eyes[0, 0] < eyes[1, 0]  # eyes inside, left of right
    assert abs(eyes[0, 1] - eyes[1, 1]) < 15 and 60 < eyes[1, 0] - eyes[0, 0] < 200
    x, _y, w, _h = r["bbox"]
    assert w > 200 and x + w / 2 == pytest.approx(150, abs=40)  # the face fills the frame


def test_crop_fallback_cues():
    cfg = FacesConfig(crop_fallback=True)
    face = MEAN_SHAPE * 40 + 100  # eyes 80 px apart, centred in a 200 px square
    assert fit_residual(face, MEAN_SHAPE) == pytest.approx(0.0, abs=1e-9)
    assert looks_like_face_crop(np.zeros((200, 200), np.uint8), face, cfg) == (True, "")
    ok, why = looks_like_face_crop(np.zeros((100, 300), np.uint8), face, cfg)
    assert not ok and "aspect" in why
    ok, why = looks_like_face_crop(np.zeros((200, 200), np.uint8), face * 0.2 + 80, cfg)
    assert not ok and "eye distance" in why
    bent = face.copy()
    bent[:17] += np.linspace(0, 60, 17)[:, None]  # a jaw line that no face has
    ok, why = looks_like_face_crop(np.zeros((200, 200), np.uint8), bent, cfg)
    assert not ok and "residual" in why


def test_stage_reports_paths_and_rejects(tmp_path: Path):
    import hashlib

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    cv2.imwrite(str(imgs / "tight.png"), _tight_crop())
    cv2.imwrite(str(imgs / "face.jpg"), load_image(str(FEAT_DATA / "single_face.jpg")))
    cv2.imwrite(str(imgs / "grey.png"), np.full((200, 260), 128, np.uint8))  # no face anywhere
    cv2.imwrite(str(imgs / "dot.png"), np.full((1, 1), 9, np.uint8))
    rows = []
    for i, p in enumerate(sorted(imgs.iterdir())):
        im = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        rows.append({"sample_id": p.stem, "source_path": str(p), "content_sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                     "split": "train", "label_original": "happy", "label_raw": "happy", "collection": "t",
                     "width": im.shape[1], "height": im.shape[0], "channels": 1, "source_row": i, "run_id": "t"})
    store = Store(tmp_path / "out")
    store.write_part("samples", "t", pa.Table.from_pylist(rows))
    with open_run(store, "test", {}) as run:
        s = run_faces(store, run, FacesConfig(workers=1, landmarks="dlib", contact_sheet_n=0), progress=False)
    assert s["by_detector"] == {"dlib": 1, "dlib_padded": 1}
    assert s["images_rejected"] == 2 and s["rejects_by_reason"] == {"no_face": 2}
    msgs = {r["source_ref"]: r["message"] for r in store.read("rejects").to_pylist()}
    assert "dlib_padded" in msgs["grey"] and "mmod" in msgs["grey"] and "rotated" in msgs["grey"]
    assert "smaller than 16 px" in msgs["dot"]
    det = {r["sample_id"]: r["detector"] for r in store.read("faces", ["sample_id", "detector"]).to_pylist()}
    assert det == {"face": "dlib", "tight": "dlib_padded"}


class _Stub:
    """A backend that finds one 20 px face (score `scores[n]`) on the n-th view any stub of `calls`
    sees: at the view's centre (the image's centre in every view), or its corner for n in `corner`."""

    def __init__(self, name: str, calls: list, scores: dict[int, float] | None = None, corner: tuple[int, ...] = ()):
        self.name, self.calls, self.scores, self.corner = name, calls, scores or {}, corner

    def detect(self, image: np.ndarray) -> list[Detection]:
        n = len(self.calls)
        self.calls.append(image.shape[:2])
        h, w = image.shape[:2]
        box = (0.0, 0.0, 20.0, 20.0) if n in self.corner else (w / 2 - 10, h / 2 - 10, 20.0, 20.0)
        return [Detection(box, self.scores[n])] if n in self.scores else []


def _find(work: np.ndarray, cfg: FacesConfig, scores: dict[int, float] | None = None, corner: tuple[int, ...] = ()):
    calls: list = []
    hog, cnn = _Stub("dlib", calls, scores, corner), _Stub("dlib_cnn", calls, scores, corner)
    tried: list[str] = []
    dets, name, view = find_faces(work, hog, cfg, lambda: cnn, tried)
    return dets, name, view, tried, calls


ALL_PATHS = ["dlib", "dlib_padded", "dlib_rotated(-30)", "dlib_rotated(30)", "dlib_rotated(-15)",
             "dlib_rotated(15)", "dlib_rotated(-45)", "dlib_rotated(45)", "mmod", "mmod_rotated(-30)",
             "mmod_rotated(30)", "mmod_large"]


DETECTOR_PATHS = set(next(c for c in load_contract("faces").columns if c.name == "detector").allowed)


def test_second_chances_run_cheapest_first_and_stop_at_the_first_face():
    work = np.full((350, 300), 120, np.uint8)  # padded copy 584 px: larger than mmod_max_side (400)
    cfg = FacesConfig()
    dets, name, _, tried, calls = _find(work, cfg)
    assert dets == [] and name == "" and tried == ALL_PATHS  # nothing found: every pass, in this order
    assert calls[8] == (400, 366) and calls[11] == (584, 534)  # mmod at 400 px, mmod_large unscaled (< 600)
    assert max(calls[9]) == max(calls[10]) == 400  # rotated copies for MMOD scaled to 400 px too
    for k, path in enumerate(ALL_PATHS):
        dets, name, view, tried, calls = _find(work, cfg, {k: 1.0})
        assert tried == ALL_PATHS[: k + 1] and len(dets) == 1
        assert name == path.split("(")[0] and view.image.shape[:2] == calls[k]
        assert name in DETECTOR_PATHS  # the faces contract takes every path (mmod_rotated / mmod_large did not)
        c = apply_affine(np.array([[150.0, 175.0]]), view.to_view)[0]  # every view keeps the image centred
        assert c == pytest.approx([view.image.shape[1] / 2, view.image.shape[0] / 2], abs=1.0)


def test_weak_faces_on_rotated_copies_are_ignored_and_on_the_padded_copy_kept_last():
    work = np.full((200, 200), 120, np.uint8)
    cfg = FacesConfig(mmod=False)
    floor = cfg.rotated_min_score
    dets, name, *_ = _find(work, cfg, {2: floor - 0.01, 7: floor})
    assert name == "dlib_rotated" and dets[0].score == floor  # the -30 copy's face was too weak
    dets, name, _, tried, _ = _find(work, cfg, {1: 0.01})  # a weak face on the padded copy: the search goes on,
    assert name == "dlib_padded" and dets[0].score == 0.01 and len(tried) == 8  # and keeps it when nothing else finds one
    dets, name, *_ = _find(work, cfg, {1: 0.01, 6: floor}, corner=(1,))
    assert name == "dlib_rotated" and dets[0].score == floor  # a later face elsewhere wins,
    dets, name, *_ = _find(work, cfg, {1: 0.01, 6: floor})
    assert name == "dlib_padded" and dets[0].score == 0.01  # one on the same spot confirms the weak HOG box
    assert _find(work, cfg, {1: cfg.padded_min_score})[3] == ["dlib", "dlib_padded"]  # a strong one ends it


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0 and box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_mmod_large_only_when_the_first_mmod_pass_saw_a_smaller_copy():
    small = np.full((200, 200), 120, np.uint8)  # padded copy 334 px <= mmod_max_side: nothing to enlarge
    assert _find(small, FacesConfig())[3] == ALL_PATHS[:-1]
    off = FacesConfig(mmod_rotate_degrees=(), mmod_large_side=None, rotate_degrees=())
    assert _find(np.full((350, 300), 120, np.uint8), off)[3] == ["dlib", "dlib_padded", "mmod"]


def test_a_face_turned_on_its_side_is_found_by_a_45_degree_copy():
    """Old passes (HOG at +-30, then MMOD upright): only the ~1 s MMOD pass found it; now HOG at +-45."""
    img = cv2.resize(load_image(str(FEAT_DATA / "single_face.jpg")), (240, 236), interpolation=cv2.INTER_AREA)
    x, y, w, h = get_backend("dlib").detect(img)[0].bbox
    turn = rotated_view(View(img, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])), 90.0)
    truth = apply_affine(np.array([[x + w / 2, y + h / 2]]), turn.to_view)[0]
    tried: list[str] = []
    recs = analyze_image(turn.image, get_backend("dlib"), FacesConfig(landmarks="dlib", mmod=False), tried=tried)
    assert [r["detector"] for r in recs] == ["dlib_rotated"] and tried[-1] == "dlib_rotated(-45)"
    bx, by, bw, bh = recs[0]["bbox"]
    assert np.hypot(bx + bw / 2 - truth[0], by + bh / 2 - truth[1]) < 0.3 * w  # the box mapped back onto the face
    old = FacesConfig(landmarks="dlib", mmod=False, rotate_degrees=(-30.0, 30.0))
    assert analyze_image(turn.image, get_backend("dlib"), old) == []

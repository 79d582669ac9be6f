"""Not-a-face / unusable-image score from whatever signals exist (pure numpy).

Components, each in [0, 1] per sample; a missing signal is NaN and counts as 0:
- ``blank``: 1 at grey-level std <= blank_std_lo, 0 at >= blank_std_hi, linear between (from
  the image itself, always available);
- ``no_detection``: 1 when the faces stage found no face (primary row has detector full_frame,
  or the sample has no face row), 0 when a detector found one;
- ``quality``: fraction of the crop's quality flags tiny / blurry / extreme_pose that are raised;
- ``embedding``: far from every class centroid in the model's embedding space:
  clip((z - 2) / (outlier_z - 2), 0, 1) with z the robust z-score of the distance to the nearest
  centroid (0 within the normal spread z <= 2, 1 at z >= outlier_z);
- ``appearance``: among the crops no detector confirmed, how unlike a face the crop looks
  (distance from face space + rotated HOG, `ferclean.dataset_issues.face_space`): 1 for the
  top `nonface_top_fraction` of those rows, 0 below twice that.

score = max(blank, w_no_detection * no_detection + w_quality * quality + w_embedding * embedding
+ w_appearance * appearance). With the stage's default weights (0.4, 0.2, 0.1, 0.2) and threshold 0.6
a blank image is flagged alone, otherwise two independent signals must agree: a failed detection
alone (common on small, pre-cropped faces) never flags a sample.
"""

from __future__ import annotations

import numpy as np

#: The quality flags (of ferclean.flags.QUALITY_FLAGS) that count as evidence of a non-face.
EVIDENCE_FLAGS = ("tiny", "blurry", "extreme_pose")


def blank_evidence(pixel_std: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(n,) in [0, 1]: 1 for std <= lo, 0 for std >= hi, linear between; NaN std -> NaN."""
    std = np.asarray(pixel_std, dtype=np.float64)
    if hi <= lo:
        return np.where(np.isnan(std), np.nan, (std <= lo).astype(np.float64))
    return np.clip((hi - std) / (hi - lo), 0.0, 1.0)


def quality_evidence(flags: list[list[str] | None]) -> np.ndarray:
    """(n,) fraction of EVIDENCE_FLAGS present per sample; NaN where flags are unknown (None)."""
    out = np.full(len(flags), np.nan)
    for i, f in enumerate(flags):
        if f is not None:
            out[i] = sum(1 for q in EVIDENCE_FLAGS if q in f) / len(EVIDENCE_FLAGS)
    return out


def embedding_evidence(z: np.ndarray, outlier_z: float, floor: float = 2.0) -> np.ndarray:
    """(n,) clip((z - floor) / (outlier_z - floor), 0, 1): 0 for z <= floor, 1 for z >= outlier_z."""
    z = np.asarray(z, dtype=np.float64)
    if outlier_z <= floor:
        return (z >= outlier_z).astype(np.float64)
    return np.clip((z - floor) / (outlier_z - floor), 0.0, 1.0)


def nonface_score(
    blank: np.ndarray,
    no_detection: np.ndarray,
    quality: np.ndarray,
    embedding: np.ndarray,
    w_no_detection: float = 0.4,
    w_quality: float = 0.2,
    w_embedding: float = 0.4,
    appearance: np.ndarray | None = None,
    w_appearance: float = 0.2,
) -> np.ndarray:
    """(n,) not-a-face score in [0, 1] (see module docstring); NaN components count as 0."""
    def z(x: np.ndarray) -> np.ndarray:
        return np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)

    soft = w_no_detection * z(no_detection) + w_quality * z(quality) + w_embedding * z(embedding)
    if appearance is not None:
        soft = soft + w_appearance * z(appearance)
    return np.clip(np.maximum(z(blank), soft), 0.0, 1.0)

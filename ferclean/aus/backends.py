"""AU backends behind one interface, and the conversion of their output to `aus` rows.

A backend turns a batch of `faces` rows into intensities (N, M) float32 (NaN = not scored) and
presences (N, M) int8 (-1 = not scored) in :data:`ferclean.aus.names.AU_NAMES` order:

- :class:`GeometricBackend` (default): 68 landmarks -> FACS distances (ferclean.aus.geometric).
- openface-csv: imports OpenFace 2.0 CSVs (ferclean.aus.openface); it does not read `faces`.
- :func:`check_pyfeat`: the optional py-feat backend; it needs py-feat's AU model weights on
  disk and raises :class:`BackendUnavailable` naming where it looked otherwise (it never
  downloads).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from ferclean.aus.geometric import Reference, geometric_aus
from ferclean.aus.names import AU28_C, intensity_columns, presence_columns


class BackendUnavailable(RuntimeError):
    """The requested AU backend cannot run here (missing weights or inputs)."""


class AuBackend(Protocol):
    """Scores faces; `name` is written to the `backend` column."""

    name: str

    def columns(self) -> list[str]:
        """`faces` columns the backend reads."""
        ...

    def predict(self, faces: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(intensity (N, M) float32 in [0, 5] or NaN, presence (N, M) int8 0/1 or -1)."""
        ...


@dataclass
class GeometricBackend:
    """Landmark-geometry AUs relative to a fitted neutral :class:`Reference`."""

    reference: Reference
    landmarks_column: str = "landmarks68"
    presence_threshold: float = 1.0
    lips_part_iod: float = 0.05
    blink_ratio: float = 0.45
    name: str = "geometric"

    def columns(self) -> list[str]:
        return [self.landmarks_column]

    def predict(self, faces: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        lm = landmarks_array(faces.column(self.landmarks_column))
        inten, pres = geometric_aus(lm, self.reference, self.presence_threshold, self.lips_part_iod,
                                    self.blink_ratio)
        pres = np.where(np.isnan(inten), -1, pres).astype(np.int8)
        return inten, pres


def landmarks_array(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(N, 136) float64 from a list<float>[136] column; null or wrong-length rows become NaN."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if pa.types.is_fixed_size_list(arr.type) and arr.type.list_size == 136 and arr.null_count == 0:
        flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        return flat.reshape(n, 136)
    out = np.full((n, 136), np.nan)
    for i, v in enumerate(arr.to_pylist()):
        if v is not None and len(v) == 136:
            out[i] = np.asarray(v, dtype=np.float64)
    return out


def aus_table(
    run_id: str,
    sample_id: list[str],
    face_index: np.ndarray,
    backend: str,
    intensity: np.ndarray,
    presence: np.ndarray,
    au28: np.ndarray | None = None,
) -> pa.Table:
    """`aus` rows; NaN intensity and presence < 0 become nulls. au28: (N,) int8 or -1, optional."""
    n = len(sample_id)
    cols: dict[str, pa.Array] = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "sample_id": pa.array(sample_id, pa.string()),
        "face_index": pa.array(np.asarray(face_index, np.int16), pa.int16()),
        "backend": pa.array([backend] * n, pa.string()),
    }
    for j, c in enumerate(intensity_columns()):
        v = np.asarray(intensity[:, j], np.float32)
        cols[c] = pa.array(v, pa.float32(), mask=np.isnan(v))
    for j, c in enumerate(presence_columns()):
        v = np.asarray(presence[:, j], np.int8)
        cols[c] = pa.array(v.clip(0, 1), pa.int8(), mask=v < 0)
    v28 = np.full(n, -1, np.int8) if au28 is None else np.asarray(au28, np.int8)
    cols[AU28_C] = pa.array(v28.clip(0, 1), pa.int8(), mask=v28 < 0)
    return pa.table(cols)


#: File names py-feat 2.x stores its AU classifiers under (see feat.pretrained.load_model_weights).
PYFEAT_AU_FILES = ("xgb_au_classifier_v2.skops", "xgb_au_classifier.skops",
                   "svm_au_classifier_v2.skops", "svm_au_classifier.skops")


def pyfeat_weight_dirs(model_dir: str | None = None) -> list[Path]:
    """Folders searched for py-feat AU weights: `model_dir`, py-feat's resources folder and the
    Hugging Face cache (`$HF_HOME/hub`, default ~/.cache/huggingface/hub)."""
    import importlib.util

    dirs = [Path(model_dir)] if model_dir else []
    spec = importlib.util.find_spec("feat")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(spec.submodule_search_locations[0]) / "resources")
    hf = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    dirs.append(hf)
    return dirs


def check_pyfeat(model_dir: str | None = None) -> Path:
    """Path of a py-feat AU weight file on disk, else BackendUnavailable (nothing is downloaded)."""
    dirs = pyfeat_weight_dirs(model_dir)
    for d in dirs:
        if not d.exists():
            continue
        for name in PYFEAT_AU_FILES:
            hits = sorted(d.rglob(name))
            if hits:
                return hits[0]
    raise BackendUnavailable(
        "py-feat AU backend: no AU model weights on disk (looked for "
        f"{', '.join(PYFEAT_AU_FILES)} under {', '.join(str(d) for d in dirs)}); ferclean never "
        "downloads weights. Use backend='geometric' or 'openface-csv', or place the py-feat "
        "weights there and pass pyfeat_model_dir."
    )

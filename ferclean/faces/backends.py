"""Face detection + 68-landmark backends, loaded lazily once per thread.

Interface (:class:`FaceBackend`):
- `detect(image) -> list[Detection]`: boxes (x, y, w, h) in px of `image`, a score (None when the
  detector has none) and optional 5 points ((5, 2) px: eye centres, nose tip, mouth corners);
- `landmarks68(image, bbox) -> (68, 2)` px, iBUG-68 order.
`image` is uint8 (H, W) grey or (H, W, 3) BGR.

Backends:
- `dlib`: dlib's HOG frontal detector + the 68-point shape predictor from face-recognition-models.
- `dlib_cnn`: dlib's MMOD CNN detector (same package's `mmod_human_face_detector.dat`), same
  landmarks; finds faces the HOG misses (e.g. with sunglasses) at ~100x the cost on CPU.
- `pyfeat`: py-feat's face detector (RetinaFace or img2pose) with dlib's 68 points; only when the
  detector weights are already on disk (nothing is ever downloaded).
dlib's 5-point predictor gives eye corners and the bottom of the nose but no mouth corners, so the
5 alignment points are derived from the 68 points instead (see geometry.landmarks5_from_68).

Threads: a backend object must never be used by two threads at once. dlib's object detectors
keep the image pyramid of the image being scanned inside the detector (dlib's
object_detector_abstract.h: "Concurrent access to an instance of this object is not safe"), so two
threads detecting with one HOG detector corrupt each other's heap (`munmap_chunk(): invalid
pointer`, `free(): invalid size`, exit 134: the faces stage under the default thread task runner
with `--workers 2`). :func:`get_backend` therefore builds one backend per (thread, settings).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ferclean.faces.image import to_gray


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (missing package or weights)."""


@dataclass(frozen=True)
class Detection:
    bbox: tuple[float, float, float, float]  # x, y, w, h (px)
    score: float | None
    landmarks5: np.ndarray | None = None  # (5, 2) px or None


class FaceBackend(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Detection]: ...

    def landmarks68(self, image: np.ndarray, bbox: tuple[float, float, float, float]) -> np.ndarray: ...


def dlib_models_dir() -> Path:
    """Folder of face-recognition-models' .dat files (the package itself cannot be imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable("package face-recognition-models is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _model_file(name: str) -> str:
    p = dlib_models_dir() / name
    if not p.is_file():
        raise BackendUnavailable(f"missing model file {p}")
    return str(p)


class DlibBackend:
    """dlib HOG detector (`upsample` pyramid steps, `threshold` = adjust_threshold)."""

    name = "dlib"

    def __init__(self, upsample: int = 0, threshold: float = 0.0):
        import dlib

        self._dlib = dlib
        self.upsample = upsample
        self.threshold = threshold
        self._predictor = dlib.shape_predictor(_model_file("shape_predictor_68_face_landmarks.dat"))
        self._init_detector()

    def _init_detector(self) -> None:
        self._hog = self._dlib.get_frontal_face_detector()

    def detect(self, image: np.ndarray) -> list[Detection]:
        rects, scores, _ = self._hog.run(to_gray(image), self.upsample, self.threshold)
        return [
            Detection((float(r.left()), float(r.top()), float(r.width()), float(r.height())), float(s))
            for r, s in zip(rects, scores, strict=True)
        ]

    def landmarks68(self, image: np.ndarray, bbox: tuple[float, float, float, float]) -> np.ndarray:
        x, y, w, h = bbox
        rect = self._dlib.rectangle(int(round(x)), int(round(y)), int(round(x + w - 1)), int(round(y + h - 1)))
        shape = self._predictor(to_gray(image), rect)
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float64)


class DlibCnnBackend(DlibBackend):
    """dlib MMOD CNN detector; `score` is its confidence."""

    name = "dlib_cnn"

    def _init_detector(self) -> None:
        self._cnn = self._dlib.cnn_face_detection_model_v1(_model_file("mmod_human_face_detector.dat"))

    def detect(self, image: np.ndarray) -> list[Detection]:
        import cv2

        rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        out = []
        for d in self._cnn(rgb, self.upsample):
            if d.confidence < self.threshold:
                continue
            r = d.rect
            out.append(Detection((float(r.left()), float(r.top()), float(r.width()), float(r.height())), float(d.confidence)))
        return out


#: py-feat weights per face model: (HF repo folder in feat's resource dir, accepted file names).
PYFEAT_WEIGHTS = {
    "retinaface": ("models--py-feat--retinaface_r34", ("model.safetensors", "retinaface_r34.safetensors")),
    "img2pose": ("models--py-feat--img2pose", ("model.safetensors",)),
}


def pyfeat_resource_dir() -> Path:
    spec = importlib.util.find_spec("feat")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable("py-feat is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "resources"


def pyfeat_missing_weights(face_model: str = "retinaface") -> list[str]:
    """Paths (globs) of the py-feat detector files that are not on disk; empty when all are."""
    folder, names = PYFEAT_WEIGHTS[face_model]
    base = pyfeat_resource_dir() / folder / "snapshots"
    found = any(glob.glob(str(base / "*" / n)) for n in names)
    missing = [] if found else [str(base / "*" / names[0])]
    if face_model == "img2pose" and not glob.glob(str(base / "*" / "config.json")):
        missing.append(str(base / "*" / "config.json"))
    return missing


class PyFeatBackend(DlibBackend):
    """py-feat face detector + dlib 68 points. Raises BackendUnavailable when weights are absent."""

    name = "pyfeat"

    def __init__(self, upsample: int = 0, threshold: float = 0.5, face_model: str = "retinaface"):
        missing = pyfeat_missing_weights(face_model)
        if missing:
            raise BackendUnavailable(
                f"py-feat backend needs its {face_model} detector weights on disk; missing: {', '.join(missing)}. "
                "Nothing is downloaded: copy the Hugging Face snapshot there or use backend='dlib'."
            )
        self.face_model = face_model
        super().__init__(upsample=upsample, threshold=threshold)

    def _init_detector(self) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: never download
        from feat.detector import Detectorv1

        self._feat = Detectorv1(
            face_model=self.face_model, landmark_model=None, au_model=None, emotion_model=None,
            identity_model=None, gaze_model=None, device="cpu",
        )

    def detect(self, image: np.ndarray) -> list[Detection]:
        import cv2
        import torch

        rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        batch = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
        res = self._feat.detect_faces(batch, face_detection_threshold=self.threshold)[0]
        out = []
        for box, score in zip(res["boxes"].tolist(), res["scores"].tolist(), strict=True):
            if any(np.isnan(box)):
                continue
            x1, y1, x2, y2 = box[:4]
            out.append(Detection((x1, y1, x2 - x1, y2 - y1), float(score)))
        return out


_per_thread = threading.local()


def get_backend(name: str, upsample: int = 0, threshold: float = 0.0) -> FaceBackend:
    """The backend `name` of the calling thread, built on its first use in that thread.

    One instance per (thread, settings), never shared between threads (see the module docstring):
    a thread pool of N workers loads the models N times (~0.3 s and ~100 MB each for dlib).
    """
    cache: dict[tuple[str, int, float], FaceBackend] | None = getattr(_per_thread, "backends", None)
    if cache is None:
        cache = _per_thread.backends = {}
    key = (name, int(upsample), float(threshold))
    if key not in cache:
        cache[key] = make_backend(*key)
    return cache[key]


def make_backend(name: str, upsample: int = 0, threshold: float = 0.0) -> FaceBackend:
    """A new backend `name` (loads its models); callers own it, see :func:`get_backend`."""
    if name == "dlib":
        return DlibBackend(upsample, threshold)
    if name == "dlib_cnn":
        return DlibCnnBackend(upsample, threshold)
    if name == "pyfeat":
        return PyFeatBackend(upsample, threshold if threshold > 0 else 0.5)
    raise ValueError(f"unknown faces backend {name!r}")

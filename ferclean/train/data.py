"""Input preparation for training: crop decoding, pseudo AUs and the AU graph (augmentation: ferclean.train.augment)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ferclean.au_graph import cooccurrence_graph  # noqa: F401  (re-exported; eq. 5 lives in ferclean.au_graph)
from ferclean.aus.names import PRESENCE_AUS
from ferclean.train.augment import augment, random_erase, to_tensor  # noqa: F401  (re-exported)

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


def prototype_aus(labels: Sequence[str], au_names: Sequence[str] = OPENFACE_AUS) -> np.ndarray:
    """(N, M) float32 0/1 pseudo AU presence from EMFACS prototypes of the given labels."""
    idx = {a: j for j, a in enumerate(au_names)}
    out = np.zeros((len(labels), len(au_names)), dtype=np.float32)
    for i, lab in enumerate(labels):
        for au in EMFACS_PROTOTYPES.get(lab, ()):
            if au in idx:
                out[i, idx[au]] = 1.0
    return out

"""Geometric AUs on a small slice of real FER2013 (skips when ../shared/data is absent)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from ferclean.aus import AU_NAMES, fit_reference, geometric_aus, measure, normalise_landmarks

VOTES = {"happiness": "happy", "neutral": "neutral", "surprise": "surprise"}


def dlib_landmarks(paths: list[Path]) -> np.ndarray:
    """68 points per 48-px image (upscaled x3, HOG face or the full frame), original px."""
    import cv2
    import dlib

    models = importlib.util.find_spec("face_recognition_models").submodule_search_locations[0] + "/models/"
    det = dlib.get_frontal_face_detector()
    pred = dlib.shape_predictor(models + "shape_predictor_68_face_landmarks.dat")
    out = []
    for p in paths:
        big = cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
        rects = det(big, 0)
        rect = max(rects, key=lambda r: r.area()) if len(rects) else dlib.rectangle(0, 0, big.shape[1] - 1, big.shape[0] - 1)
        out.append([[q.x / 3, q.y / 3] for q in pred(big, rect).parts()])
    return np.asarray(out)


def test_smiles_and_open_mouths_on_real_fer_faces(fer_dir: Path):
    from sklearn.metrics import roc_auc_score

    d = pd.read_csv(fer_dir / "labels.csv")
    d = d[d[list(VOTES)].max(axis=1) >= 9]
    d = d.assign(truth=d[list(VOTES)].idxmax(axis=1).map(VOTES))
    d = pd.concat([g.head(40) for _, g in d.groupby("truth")])
    lm = dlib_landmarks([fer_dir / p for p in d.image_path])
    truth = d.truth.to_numpy()
    ref = fit_reference(measure(normalise_landmarks(lm)[0]), truth == "neutral")
    inten, pres = geometric_aus(lm, ref)
    assert roc_auc_score(truth == "happy", inten[:, AU_NAMES.index("AU12")]) > 0.85
    assert roc_auc_score(truth == "surprise", inten[:, AU_NAMES.index("AU05")]) > 0.75
    assert pres[truth == "happy", AU_NAMES.index("AU12")].mean() > pres[truth == "neutral", AU_NAMES.index("AU12")].mean() + 0.3

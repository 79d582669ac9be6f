"""Validate the geometric AU backend on FER2013 with FER+ votes (needs ../shared/data/fer2013).

Rows whose FER+ plurality has >= 7 of 10 votes. 68 landmarks come from dlib (the faces stage
is built in parallel): each 48x48 crop is upscaled x3, HOG-detected, falling back to the full
frame when HOG finds nothing. Landmarks are cached in /tmp (never in the repo).

The neutral reference is fitted as the aus stage fits it: on all FER2013 train images (28,558
unique PNGs, not only the scored rows), neutral = FER2013's own `label` (never the FER+ votes,
which are only the evaluation truth); units over all of them.

Reports per-class AUROC of the prototype AUs vs rest (train, valid and all scored rows), 5-fold
logistic-regression accuracy from the AU vector vs the majority-class rate, and the
co-occurrence graph (PNG + strongest links). With the default conditional reference the
neutral-median reference is scored too (key `baseline_neutral_median`).

    python benchmarks/validate_aus.py [--reference conditional|neutral|collection]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench_common import PROTOTYPES, evaluate, load_rows, lr_accuracy, prototype_aurocs  # noqa: F401  (shared helpers)

from bench_common import FER as DATA  # noqa: E402
CACHE = Path("/tmp/ferclean_aus_cache")
RESULTS = Path(__file__).resolve().parent / "results"


def dlib_models():
    import dlib

    models = importlib.util.find_spec("face_recognition_models").submodule_search_locations[0] + "/models/"
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(models + "shape_predictor_68_face_landmarks.dat")


def landmarks_for(paths: list[str], upscale: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(N, 68, 2) landmarks in original 48-px coordinates and (N,) bool: HOG found a face."""
    import cv2
    import dlib

    det, pred = dlib_models()
    out = np.zeros((len(paths), 68, 2), np.float32)
    found = np.zeros(len(paths), bool)
    for i, p in enumerate(paths):
        img = cv2.imread(str(DATA / p), cv2.IMREAD_GRAYSCALE)
        big = cv2.resize(img, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
        rects = det(big, 0)
        if len(rects):
            rect = max(rects, key=lambda r: r.area())
            found[i] = True
        else:
            h, w = big.shape
            rect = dlib.rectangle(0, 0, w - 1, h - 1)
        shp = pred(big, rect)
        out[i] = np.array([[q.x, q.y] for q in shp.parts()], np.float32) / upscale
    return out, found


def cached_landmarks(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    CACHE.mkdir(exist_ok=True)
    f = CACHE / "fer_landmarks68.npz"
    have: dict[str, tuple[np.ndarray, bool]] = {}
    if f.exists():
        z = np.load(f, allow_pickle=False)
        have = {p: (lm, fd) for p, lm, fd in zip(z["paths"], z["lm"], z["found"], strict=True)}
    todo = [p for p in rows.image_path.unique() if p not in have]
    if todo:
        t0 = time.time()
        lm, fd = landmarks_for(todo)
        print(f"dlib landmarks: {len(todo)} images in {time.time() - t0:.1f} s", file=sys.stderr)
        for p, a, b in zip(todo, lm, fd, strict=True):
            have[p] = (a, bool(b))
        keys = sorted(have)
        np.savez(f, paths=np.array(keys), lm=np.stack([have[k][0] for k in keys]),
                 found=np.array([have[k][1] for k in keys]))
    lm = np.stack([have[p][0] for p in rows.image_path])
    fd = np.array([have[p][1] for p in rows.image_path])
    return lm, fd




def with_fastlm(rows: pd.DataFrame, lm: np.ndarray) -> np.ndarray:
    """The faces stage's default for crops (`landmarks = "dlib+fastlm"`): dlib's points blended with
    fastlm's on the image and its mirror (`ferclean.faces.fastlm.blend_landmarks`)."""
    import cv2

    from ferclean.faces.fastlm import blend_landmarks, predict_landmarks

    imgs = [cv2.imread(str(DATA / p), cv2.IMREAD_GRAYSCALE) for p in rows.image_path]
    return blend_landmarks(lm, predict_landmarks(imgs, flip=True))


def lr_holdout(features: np.ndarray, truth: np.ndarray, fit: np.ndarray, test: np.ndarray) -> float:
    """Accuracy on `test` rows of the same logistic regression fitted on `fit` rows only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.nan_to_num(features)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[fit], truth[fit])
    return float((clf.predict(x[test]) == truth[test]).mean())


def load_reference_rows() -> pd.DataFrame:
    """All FER2013 train images (one row per PNG) with FER2013's own `label`: the reference split."""
    d = pd.read_csv(DATA / "labels.csv")
    return d[d.split == "train"].drop_duplicates("image_path").reset_index(drop=True)


# -- alternatives measured before choosing the geometric recipes ---------------------------------
def mesh_nnls_intensity(rows: pd.DataFrame, lm: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Invert py-feat's AU->mesh PLS model (au_to_mesh_pls_v4.npz) with NNLS on 2-D landmarks.

    The 68 dlib points are taken at DLIB68_FROM_MP478 mesh vertices; each face's IOD-normalised
    landmarks minus the train-neutral median are explained as a non-negative AU combination plus
    a signed pose term. Returns (N, 20) AU activations and their names.
    """
    from scipy.optimize import nnls

    from feat.utils.blendshape_to_au import DLIB68_FROM_MP478
    from ferclean.aus.geometric import normalise_landmarks

    spec = importlib.util.find_spec("feat")
    d = np.load(Path(spec.submodule_search_locations[0]) / "resources" / "au_to_mesh_pls_v4.npz")
    cols = [str(c) for c in d["input_columns"]]
    idx = list(DLIB68_FROM_MP478)
    coef = d["coef"].reshape(len(cols), 3, 478)[:, :2, idx]  # (23, 2, 68), model y points up
    mean68 = d["intercept"].reshape(3, 478)[:2, idx].T * np.array([1, -1])
    iod = np.linalg.norm(mean68[42:48].mean(0) - mean68[36:42].mean(0))
    basis = np.stack([coef[:, 0], -coef[:, 1]], -1).reshape(len(cols), -1).T / iod  # (136, 23)
    n_au = sum(c.startswith("AU") for c in cols)
    design = np.concatenate([basis[:, :n_au], basis[:, n_au:], -basis[:, n_au:]], 1)
    pts, _ = normalise_landmarks(lm)
    train_neutral = ((rows.split == "train") & (rows.truth == "neutral")).to_numpy()
    delta = (pts - np.median(pts[train_neutral], 0)).reshape(len(pts), -1)
    est = np.array([nnls(design, v)[0][:n_au] for v in delta])
    return est, cols[:n_au]


def appearance_features(rows: pd.DataFrame, lm: np.ndarray) -> dict[str, np.ndarray]:
    """Landmark-anchored gradient energy (FACS wrinkle cues) on the 48-px images.

    glabella_gx: vertical furrows between the brows (AU04); nose_bridge_gy: horizontal nose
    wrinkles (AU09); nasolabial_gx: nasolabial furrow (AU10/AU12); forehead_gy: horizontal
    forehead wrinkles (AU01/AU02). Each is mean |Sobel| in a 0.24-IOD patch / the image's mean |Sobel|.
    """
    import cv2
    from scipy.ndimage import map_coordinates

    from ferclean.aus.geometric import as_points, normalise_landmarks

    pts, iod = normalise_landmarks(lm)
    p = as_points(lm)
    re, le = p[:, 36:42].mean(1), p[:, 42:48].mean(1)
    mid, d = (re + le) / 2, le - re
    c, s = d[:, 0] / iod, d[:, 1] / iod
    g = np.linspace(-0.12, 0.12, 7)
    gx_, gy_ = np.meshgrid(g, g)
    centres = {
        "glabella_gx": (lambda q: (q[21] + q[22]) / 2, 0),
        "nose_bridge_gy": (lambda q: (q[27] + q[28]) / 2, 1),
        "nasolabial_gx": (lambda q: (q[31] + q[48]) / 2 - [0.1, 0], 0),
        "forehead_gy": (lambda q: (q[19] + q[24]) / 2 - [0, 0.25], 1),
    }
    out = {k: np.zeros(len(rows)) for k in centres}
    for i, path in enumerate(rows.image_path):
        img = cv2.imread(str(DATA / path), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        grads = [np.abs(cv2.Sobel(img, cv2.CV_32F, 1, 0)), np.abs(cv2.Sobel(img, cv2.CV_32F, 0, 1))]
        norm = grads[0].mean() + grads[1].mean() + 1e-3
        for k, (f, axis) in centres.items():
            cq = f(pts[i])
            qx, qy = cq[0] + gx_, cq[1] + gy_
            ix = mid[i, 0] + iod[i] * (c[i] * qx - s[i] * qy)
            iy = mid[i, 1] + iod[i] * (s[i] * qx + c[i] * qy)
            out[k][i] = map_coordinates(grads[axis], [iy.ravel(), ix.ravel()], order=1, mode="nearest").mean() / norm
    return out


def class_aurocs(values: dict[str, np.ndarray], truth: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    from sklearn.metrics import roc_auc_score

    return {k: {c: round(float(roc_auc_score(truth == c, v)), 3) for c in classes} for k, v in values.items()}


# -- report -----------------------------------------------------------------------------------------
FACS_LINKS = [("AU02", "AU01"), ("AU01", "AU02"), ("AU12", "AU06"), ("AU06", "AU12"), ("AU26", "AU25"),
              ("AU25", "AU26")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-votes", type=int, default=7)
    ap.add_argument("--reference", choices=["conditional", "neutral", "collection"], default="conditional")
    ap.add_argument("--landmarks", choices=["dlib+fastlm", "dlib"], default="dlib+fastlm",
                    help="dlib+fastlm: the faces stage default for crops (dlib blended with fastlm); dlib: dlib alone")
    ap.add_argument("--experiments", action="store_true", help="also measure the mesh-NNLS and appearance alternatives")
    args = ap.parse_args()
    if not (DATA / "labels.csv").exists():
        sys.exit(f"FER2013 data not found at {DATA}")
    from ferclean.au_graph import plot_graph
    from ferclean.aus.names import AU_NAMES

    t0 = time.time()
    rows = load_rows(args.min_votes)
    lm, found = cached_landmarks(rows)
    ref_rows = load_reference_rows()
    ref_lm, _ = cached_landmarks(ref_rows)
    lm_dlib, ref_lm_dlib = lm, ref_lm
    if args.landmarks == "dlib+fastlm":
        lm, ref_lm = with_fastlm(rows, lm), with_fastlm(ref_rows, ref_lm)
    res = evaluate(rows, lm, args.reference, ref_rows=ref_rows, ref_lm=ref_lm)
    truth = rows.truth.to_numpy()
    valid = (rows.split == "valid").to_numpy()
    train = (rows.split == "train").to_numpy()
    va = prototype_aurocs(res["intensity"][valid], truth[valid], AU_NAMES)
    ta = prototype_aurocs(res["intensity"][train], truth[train], AU_NAMES)

    def split_aurocs(inten: np.ndarray) -> dict:
        out = {}
        for name, sel in (("train", train), ("valid", valid), ("all", np.ones(len(rows), bool))):
            a = prototype_aurocs(inten[sel], truth[sel], AU_NAMES)
            out[name] = {"mean": round(float(np.mean([v for d in a.values() for v in d.values()])), 4),
                         "auroc": {k: {au: round(v, 3) for au, v in d.items()} for k, d in a.items()}}
        return out
    hog = prototype_aurocs(res["intensity"][found], truth[found], AU_NAMES)
    co = res["co"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / "aus_graph_fer2013.png"
    plot_graph(AU_NAMES, co, png, title=f"FER2013 train (FER+ >= {args.min_votes} votes): P(AU_p | AU_q)")
    ix = {a: i for i, a in enumerate(AU_NAMES)}
    links = {f"P({p}|{q})": round(float(co.A[ix[p], ix[q]]), 3) for p, q in FACS_LINKS}
    base = {f"P({p})": round(float(co.n_q[ix[p]] / max(1, (rows.split == "train").sum())), 3) for p in
            ("AU01", "AU02", "AU06", "AU12", "AU25", "AU26")}
    flat_va = [v for d in va.values() for v in d.values()]
    flat_ta = [v for d in ta.values() for v in d.values()]
    out = {
        "landmarks": args.landmarks,
        "rows": int(len(rows)), "train_rows": int((~valid).sum()), "valid_rows": int(valid.sum()),
        "hog_found_rate": round(float(found.mean()), 4),
        "class_counts": rows.truth.value_counts().to_dict(),
        "reference": {"source": res["reference"].source, "neutral_faces": res["reference"].n_neutral_value,
                      "scale_faces": res["reference"].n_scale,
                      "ridge_alpha": (res["reference"].conditional or {}).get("alpha"),
                      "conditional_measures": (res["reference"].conditional or {}).get("measures")},
        "prototype_auroc": {k: {a: round(v, 3) for a, v in d.items()} for k, d in res["aurocs"].items()},
        "mean_prototype_auroc": round(res["mean_auroc"], 4),
        "prototype_auroc_train_only": {k: {a: round(v, 3) for a, v in d.items()} for k, d in ta.items()},
        "mean_prototype_auroc_train_only": round(float(np.mean(flat_ta)), 4),
        "prototype_auroc_valid_only": {k: {a: round(v, 3) for a, v in d.items()} for k, d in va.items()},
        "mean_prototype_auroc_valid_only": round(float(np.mean(flat_va)), 4),
        "mean_prototype_auroc_hog_found_only": round(float(np.mean([v for d in hog.values() for v in d.values()])), 4),
        "lr_5fold_accuracy": round(res["lr_acc"], 4), "majority_rate": round(res["majority"], 4),
        "lr_train_fit_valid_accuracy": round(lr_holdout(res["intensity"], truth, train, valid), 4),
        "presence_rate_train": {a: round(float(v), 3) for a, v in zip(AU_NAMES, res["presence"][~valid].mean(0), strict=True)},
        "facs_links": links, "base_rates": base,
        "never_present": [AU_NAMES[i] for i in co.never_present],
        "targets": {"AU12_happy>=0.85": res["aurocs"]["happy"]["AU12"] >= 0.85,
                    "mean_prototype>=0.70": res["mean_auroc"] >= 0.70},
    }
    if args.reference == "conditional":
        out["baseline_neutral_median"] = split_aurocs(
            evaluate(rows, lm, "neutral", ref_rows=ref_rows, ref_lm=ref_lm)["intensity"])
    if args.landmarks != "dlib":
        out["baseline_dlib_landmarks"] = split_aurocs(
            evaluate(rows, lm_dlib, args.reference, ref_rows=ref_rows, ref_lm=ref_lm_dlib)["intensity"])
    out["seconds"] = round(time.time() - t0, 1)
    (RESULTS / "aus_validation.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    if args.experiments:
        out = {"note": "alternatives to the geometric recipes, same rows and landmarks"}
        est, names = mesh_nnls_intensity(rows, lm)
        mesh = prototype_aurocs(est, truth, tuple(names)) if all(
            a in names for p in PROTOTYPES.values() for a in p) else {}
        out["experiment_mesh_nnls"] = {
            "prototype_auroc": {k: {a: round(v, 3) for a, v in d.items()} for k, d in mesh.items()},
            "mean_prototype_auroc": round(float(np.mean([v for d in mesh.values() for v in d.values()])), 4),
            "lr_5fold_accuracy": round(lr_accuracy(est, truth)[0], 4)}
        app = appearance_features(rows, lm)
        out["experiment_appearance_auroc"] = class_aurocs(app, truth, ["happy", "surprise", "sad", "angry", "fear", "disgust", "neutral"])
        both = np.c_[res["intensity"], np.stack(list(app.values()), 1)]
        out["experiment_appearance_lr_5fold_accuracy_with_aus"] = round(lr_accuracy(both, truth)[0], 4)
        (RESULTS / "aus_experiments.json").write_text(json.dumps(out, indent=1))
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    if "--landmarks-only" in sys.argv:
        cached_landmarks(load_rows())
    else:
        main()

"""What the benchmark scripts share: paths, the FER+ plurality map, flag P/R/F1, loading a curate
run's FER2013 train split, the audit simulation's scoring, image-decoding helpers.

A helper module, not a script: scripts import it (`from bench_common import ...`; Python puts the
script's folder on sys.path), never each other.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ferclean.classes import FER7, FERPLUS_VOTE_COLUMNS
from ferclean.noise import RelabelConfig, decide, final_labels
from ferclean.primary import primary_aus
from ferclean.store import Store

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
FER = BENCH.parents[1] / "shared" / "data" / "fer2013"
FASTLM_CACHE = Path("/tmp/ferclean_fastlm")
FASTLM_TARGETS = FASTLM_CACHE / "targets.npz"  # dlib 68-point targets (benchmarks/train_fastlm.py --steps targets)

#: FER+ vote column -> FER class, for the 8 FER+ classes (vote column order: ties go to the first).
FERPLUS_VOTES: dict[str, str] = dict(FERPLUS_VOTE_COLUMNS)
#: The same for the 7 FER2013 classes: the "FER+ plurality" that benchmarks score labels against.
PLURALITY: dict[str, str] = {k: v for k, v in FERPLUS_VOTE_COLUMNS.items() if v in FER7}


#: The prototype AUs of each class whose AUROC (class vs rest) measures the pseudo AUs.
PROTOTYPES = {
    "happy": ["AU06", "AU12"],
    "surprise": ["AU01", "AU02", "AU05", "AU26"],
    "sad": ["AU01", "AU04", "AU15"],
    "angry": ["AU04", "AU07", "AU23"],
    "fear": ["AU01", "AU02", "AU04", "AU20"],
    "disgust": ["AU09", "AU10"],
}


def load_rows(min_votes: int = 7) -> pd.DataFrame:
    """FER rows whose FER+ plurality has >= min_votes votes, with column `truth`."""
    d = pd.read_csv(FER / "labels.csv")
    v = list(FERPLUS_VOTES)
    top = d[v].max(axis=1)
    d = d[top >= min_votes].copy()
    d["truth"] = d[v].idxmax(axis=1).map(FERPLUS_VOTES)
    return d.reset_index(drop=True)


def prototype_aurocs(intensity: np.ndarray, truth: np.ndarray, aus: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """AUROC of each prototype AU's intensity for class vs rest."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, dict[str, float]] = {}
    for cls, protos in PROTOTYPES.items():
        y = truth == cls
        if y.sum() == 0 or (~y).sum() == 0:
            continue
        out[cls] = {a: float(roc_auc_score(y, np.nan_to_num(intensity[:, aus.index(a)]))) for a in protos}
    return out


def lr_accuracy(features: np.ndarray, truth: np.ndarray, folds: int = 5) -> tuple[float, float]:
    """5-fold accuracy of a standardised multinomial logistic regression, and the majority rate."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.nan_to_num(features)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    acc = cross_val_score(clf, x, truth, cv=StratifiedKFold(folds, shuffle=True, random_state=0))
    _, counts = np.unique(truth, return_counts=True)
    return float(acc.mean()), float(counts.max() / counts.sum())


def prf(flag: np.ndarray, truth: np.ndarray) -> dict:
    """Flag precision / recall / F1 against `truth` (both boolean arrays)."""
    tp = int((flag & truth).sum())
    p, r = tp / max(int(flag.sum()), 1), tp / max(int(truth.sum()), 1)
    return {"flagged": int(flag.sum()), "precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / max(p + r, 1e-12), 4)}


def load_train_split(store: Store) -> dict:
    """A curate run's train-split samples in sample_id order: labels, FER+ plurality (-1 outside the 7
    classes), the scored rows (`eval`: plurality known, label not ambiguous) and the primary faces'
    AU presence (0 where a sample has no aus row)."""
    s = store.read("samples", columns=["sample_id", "source_path", "split", "label_original",
                                       "ferplus_majority", "label_ambiguous"])
    s = s.filter(pc.equal(s["split"], "train")).sort_by("sample_id")
    ids = s["sample_id"].to_pylist()
    aus = primary_aus(store)
    au_cols = sorted(c for c in aus.column_names if c.startswith("AU") and c.endswith("_c")
                     and aus[c].null_count < aus.num_rows)
    rows = {r["sample_id"]: [r[c] or 0 for c in au_cols] for r in aus.select(["sample_id", *au_cols]).to_pylist()}
    presence = np.array([rows.get(i, [0] * len(au_cols)) for i in ids], np.float32)
    labels = np.array([FER7.index(x) for x in s["label_original"].to_pylist()], np.int64)
    plural = np.array([FER7.index(PLURALITY[p]) if p in PLURALITY else -1
                       for p in s["ferplus_majority"].to_pylist()], np.int64)
    ev = (plural >= 0) & ~np.array([bool(x) for x in s["label_ambiguous"].to_pylist()])
    return {"ids": ids, "paths": s["source_path"].to_pylist(), "labels": labels, "plural": plural,
            "eval": ev, "aus": presence, "au_names": [c[:-2] for c in au_cols],
            "missing_aus": len(ids) - sum(i in rows for i in ids)}


def aus_columns(store_dir: str, image_paths: Sequence[str], suffix: str) -> tuple[np.ndarray, list[str]]:
    """(N, M) AU columns ending in `suffix` (`_c` presence, `_r` intensity) of each image's primary face
    from a run's `aus` table (NaN where none; all-empty AUs left out)."""
    aus = primary_aus(Store(Path(store_dir))).to_pandas()
    cols = sorted(c for c in aus.columns if c.startswith("AU") and c.endswith(suffix) and aus[c].notna().any())
    table = aus.set_index("sample_id")[cols].reindex(list(image_paths))
    return table.to_numpy(np.float64), [c[: -len(suffix)] for c in cols]


def final_accuracy(labels, plural, ev, z, prior, audited, probs=None) -> tuple[float, float]:  # noqa: ANN001
    """(final-label accuracy, flag F1 vs label != plurality), both on the scored rows not audited.

    z: saved scores (npz); `probs` replaces z's probabilities when given (e.g. combined with the AU view).
    """
    cfg = RelabelConfig(method="ulcag", rule="bayes", class_prior=prior)
    alpha = None if z["alpha"].shape == () else z["alpha"]
    sem = None if z["sem_dist"].shape == () else z["sem_dist"]
    d = decide(labels, (z["probs"] if probs is None else probs).astype(np.float64), alpha, sem, cfg)
    fin = final_labels(labels, d.action, d.suggested)
    fin[audited] = plural[audited]
    rest = ev.copy()
    rest[audited] = False
    flag, wrong = np.isin(d.action, ["relabel", "review"])[rest], (labels != plural)[rest]
    tp = float((flag & wrong).sum())
    f1 = 2 * tp / max(float(flag.sum() + wrong.sum()), 1.0)
    return float((fin[rest] == plural[rest]).mean()), f1


# -- image decoding (faces / fastlm benchmarks) ---------------------------------------------------
def fer_rows(n: int | None) -> list[dict]:
    """The first `n` rows of the FER2013 manifest (all when None)."""
    with open(FER / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    return rows if n is None else rows[:n]


def samples_table(items: list[tuple[str, Path]], sizes: dict[Path, tuple[int, int, int]] | None = None) -> pa.Table:
    """A `samples` table for (sample_id, path) pairs (width/height/channels from the header)."""
    from PIL import Image

    rows = []
    for i, (sid, p) in enumerate(items):
        if sizes and p in sizes:
            w, h, c = sizes[p]
        else:
            with Image.open(p) as im:
                w, h = im.size
                c = len(im.getbands())
        rows.append({
            "sample_id": sid, "source_path": str(p), "content_sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            "split": "train", "label_original": None, "label_raw": None, "collection": "bench",
            "width": w, "height": h, "channels": c, "source_row": i, "run_id": "bench",
        })
    return pa.Table.from_pylist(rows)


def _decode_chunk(paths: list[str]) -> int:
    import cv2

    return sum(cv2.imread(p, cv2.IMREAD_UNCHANGED) is not None for p in paths)


def decode_rate(paths: list[str], workers: int) -> float:
    """cv2.imread images/s over `paths` with `workers` processes (pool start-up included)."""
    chunks = [paths[i::workers * 4] for i in range(workers * 4)]
    t = time.perf_counter()
    if workers == 1:
        n = _decode_chunk(paths)
    else:
        with ProcessPoolExecutor(workers) as pool:
            n = sum(pool.map(_decode_chunk, chunks))
    return n / (time.perf_counter() - t)


# -- landmarks and geometric AUs (aus / fastlm benchmarks) ----------------------------------------
def evaluate(rows: pd.DataFrame, lm: np.ndarray, reference: str = "conditional", presence_threshold: float = 1.0,
             ref_rows: pd.DataFrame | None = None, ref_lm: np.ndarray | None = None) -> dict:
    """Fit the reference on `ref_rows` / `ref_lm` (default: the train part of `rows`), neutral =
    FER2013's own label; score `rows`."""
    from ferclean.au_graph import cooccurrence
    from ferclean.aus.geometric import fit_reference, geometric_aus, measure, normalise_landmarks
    from ferclean.aus.names import AU_NAMES

    train = (rows.split == "train").to_numpy()
    if ref_rows is None:
        ref_rows, ref_lm = rows[train], lm[train]
    pts = normalise_landmarks(ref_lm)[0]
    neutral = (ref_rows.label == "neutral").to_numpy() if reference in ("neutral", "conditional") else None
    ref = fit_reference(measure(pts), neutral, points=pts if reference == "conditional" else None)
    inten, pres = geometric_aus(lm, ref, presence_threshold=presence_threshold)
    truth = rows.truth.to_numpy()
    aurocs = prototype_aurocs(inten, truth, AU_NAMES)
    flat = [v for d in aurocs.values() for v in d.values()]
    acc, majority = lr_accuracy(inten, truth)
    co = cooccurrence(pres[train])
    return {"reference": ref, "intensity": inten, "presence": pres, "aurocs": aurocs,
            "mean_auroc": float(np.mean(flat)), "lr_acc": acc, "majority": majority, "co": co}


def dlib_flipped_landmarks(paths: list[str]) -> np.ndarray:
    """dlib landmarks (stage path) of the horizontally mirrored images, mapped back to the originals."""
    import cv2

    from ferclean.faces import FacesConfig, analyze_image, get_backend, load_image
    from ferclean.faces.fastlm import MIRROR_68

    cfg = FacesConfig()
    backend = get_backend(cfg.backend, cfg.upsample, cfg.score_threshold)
    out = np.zeros((len(paths), 68, 2))
    for i, p in enumerate(paths):
        img = cv2.flip(load_image(p), 1)
        r = next(r for r in analyze_image(img, backend, cfg) if r["is_primary"])
        lm = np.asarray(r["landmarks68"]).reshape(68, 2)[MIRROR_68]
        lm[:, 0] = img.shape[1] - 1 - lm[:, 0]
        out[i] = lm
    return out


def oof_inputs(preds: pd.DataFrame, method: str, ids: Sequence[str]) -> dict:
    """A curate run's out-of-fold inputs of the verdict rule for `ids`: the method's probabilities,
    alpha and semantic distances, and the AU view's probabilities (NaN rows where it has none, None
    when it has none at all). `preds` is the run's `predictions` table as pandas."""
    from ferclean.au_view import AU_VIEW_METHOD

    oof = preds[(preds.method == method) & (preds.fold >= 0)].set_index("sample_id")
    au = preds[(preds.method == AU_VIEW_METHOD) & (preds.fold >= 0)].set_index("sample_id")
    probs = np.stack(oof.loc[list(ids), "probs"].to_numpy())
    au_probs = np.full_like(probs, np.nan)
    have = [i for i, s in enumerate(ids) if s in au.index]
    if have:
        au_probs[have] = np.stack(au.loc[[ids[i] for i in have], "probs"].to_numpy())
    alpha, sem = oof.loc[list(ids), "alpha"], oof.loc[list(ids), "sem_dist"]
    return {"probs": probs, "au_probs": au_probs if have else None,
            "alpha": None if alpha.isna().any() else alpha.to_numpy(),
            "sem": None if sem.isna().any() else np.stack(sem.to_numpy())}

"""A collection from another domain whose labels are right, to measure what relabel-collection does there
(issue 17: "on a collection from another domain whose labels are mostly right, at most 5 % of faces
relabelled").

    python benchmarks/shift_collection.py make --out /tmp/shift/photos [--n 1500] [--seed 0]
    python -m ferclean.cli relabel-collection /tmp/shift/photos/manifest.csv --model SRC/model --out RUN
    python benchmarks/shift_collection.py eval --run photos=RUN [--run ...]

`make` turns FER2013 **valid** faces (rows with a FER+ plurality among the 7 classes and not ambiguous;
nobody tunes on them) into 350x350 grey JPEG "news photos": the 48 px crop upscaled to a 120-220 px face,
turned by up to 12 degrees, pasted at a random place on a background made of another face's blurred,
enlarged pixels and a lighting gradient, re-lit (gamma 0.6-1.6, contrast 0.7-1.1) and saved at JPEG
quality 60-90. The given label is the **FER+ crowd plurality** (`label` column), so the labels are right by
construction against the reference this project scores with; the manifest keeps `ferplus_majority` and
`label_ambiguous` for `eval`. The faces stage has to find, align and crop every face again (the photo path,
not the pre-aligned crop path), so the model sees faces framed by another detector, at another resolution and
lighting: a domain shift of the kind web photos bring, and a labelling convention (the crowd's) unlike the
FER2013 labels the model learnt.

`eval` reads each run's latest model verdicts: share relabelled and sent to review, final-label accuracy
against the crowd before and after (a dropped sample keeps its label), the domain-shift guard's outcome and
the trust estimates from `runs.counts`. Results are merged into benchmarks/results/shift_collection.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PLURALITY
from quality_small import eval_run

FER = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013"
RESULTS = Path(__file__).resolve().parent / "results" / "shift_collection.json"


def photo(face: np.ndarray, other: np.ndarray, rng: np.random.Generator, side: int = 350) -> np.ndarray:
    """One grey `side` x `side` photo with `face` (a grey crop) pasted on a background made from `other`."""
    bg = cv2.GaussianBlur(cv2.resize(other, (side, side), interpolation=cv2.INTER_CUBIC), (0, 0), 9).astype(np.float64)
    yy, xx = np.mgrid[0:side, 0:side] / side
    a = rng.uniform(0, 2 * np.pi)
    bg = 0.6 * bg + 0.4 * (128 + 60 * (np.cos(a) * xx + np.sin(a) * yy - 0.5))
    s = int(rng.integers(120, 221))
    f = cv2.resize(face, (s, s), interpolation=cv2.INTER_CUBIC)
    rot = cv2.getRotationMatrix2D((s / 2, s / 2), float(rng.uniform(-12, 12)), 1.0)
    f = cv2.warpAffine(f, rot, (s, s), borderMode=cv2.BORDER_REFLECT).astype(np.float64)
    # feathered mask so the crop's edge is not a hard square
    m = np.zeros((s, s), np.float64)
    cv2.ellipse(m, (s // 2, s // 2), (int(s * 0.47), int(s * 0.5)), 0, 0, 360, 1.0, -1)
    m = cv2.GaussianBlur(m, (0, 0), s * 0.04)
    x0, y0 = (int(rng.integers(0, side - s + 1)) for _ in range(2))
    out = bg.copy()
    out[y0:y0 + s, x0:x0 + s] = m * f + (1 - m) * out[y0:y0 + s, x0:x0 + s]
    out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** rng.uniform(0.6, 1.6)
    out = (out - out.mean()) * rng.uniform(0.7, 1.1) + out.mean()
    out = np.clip(out + rng.normal(0, 3, out.shape), 0, 255).astype(np.uint8)
    _, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 91))])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def rows_of(split: str, exclude: str | None) -> pd.DataFrame:
    """labels.csv rows of `split` with a 7-class FER+ plurality and not ambiguous, less those whose image_path
    is in the manifest `exclude` (e.g. the rows the scoring model was trained on)."""
    df = pd.read_csv(FER / "labels.csv")
    df = df[(df.split == split) & df["ferplus_majority"].isin(PLURALITY) & ~df["label_ambiguous"].astype(bool)]
    if exclude:
        df = df[~df.image_path.isin(set(pd.read_csv(exclude).image_path))]
    return df


def make(out: str, n: int, seed: int, split: str = "valid", exclude: str | None = None) -> dict:
    df = rows_of(split, exclude)
    df = df.sample(n=min(n, len(df)), random_state=seed).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, r in df.iterrows():
        face = cv2.imread(str(FER / r.image_path), cv2.IMREAD_GRAYSCALE)
        other = cv2.imread(str(FER / df.image_path[(i + 1) % len(df)]), cv2.IMREAD_GRAYSCALE)
        name = f"images/photo{i:05d}.jpg"
        cv2.imwrite(str(root / name), photo(face, other, rng))
        rows.append({"image_path": name, "label": PLURALITY[r.ferplus_majority], "fer2013_label": r.label,
                     "ferplus_majority": r.ferplus_majority, "label_ambiguous": False, "source": r.image_path})
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    agree = float(np.mean([r["label"] == r["fer2013_label"] for r in rows]))
    return {"out": out, "photos": len(rows), "seed": seed, "split": split, "exclude": exclude,
            "fer2013_label_agrees_with_crowd": round(agree, 4)}


def crops(out: str, n: int, seed: int, split: str, exclude: str | None) -> dict:
    """The in-domain counterpart: a manifest of FER2013 crops as they are, with their **FER2013** labels (noisy:
    about 35 % differ from the crowd), paths relative to the FER2013 folder (run with `ingest: {root: ...}`)."""
    df = rows_of(split, exclude).sample(frac=1.0, random_state=seed).head(n)
    Path(out).mkdir(parents=True, exist_ok=True)
    df.to_csv(Path(out) / "manifest.csv", index=False)
    return {"out": out, "rows": len(df), "split": split, "exclude": exclude,
            "label_agrees_with_crowd": round(float((df.label == df.ferplus_majority.map(PLURALITY)).mean()), 4)}


def _merge(key: str, value: dict) -> None:
    cur = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    cur[key] = value
    RESULTS.write_text(json.dumps(cur, indent=2, default=str))
    print(json.dumps({key: value}, indent=1, default=str), flush=True)


def evaluate(out: str) -> dict:
    from ferclean.store import Store

    res = eval_run(out)
    store = Store(out)
    runs = store.read("runs").to_pandas()
    counts = json.loads(runs[runs.run_id == res["run_id"]]["counts"].iloc[0])
    n = max(int(sum(c for k, c in counts.items() if k in ("relabel.keep", "relabel.relabel", "relabel.review",
                                                            "relabel.drop"))), 1)
    res["relabelled_share"] = round(counts.get("relabel.relabel", 0) / n, 4)
    res["review_share"] = round(counts.get("relabel.review", 0) / n, 4)
    res["domain_shift"] = counts.get("relabel.domain_shift")
    res["scored"] = n
    return res


def backfill(model_dir: str, run_out: str) -> dict:
    """Add `label_noise` (the noise matrix relabel-collection caps a collection's with) and
    `confidence_profile.label_accuracy` (the training labels' three-view estimate, the domain-shift guard's
    reference) to a model saved before the train stage wrote them, from its curate run's stored out-of-fold
    predictions."""
    from quality_small import _reference

    from ferclean.model_dir import ModelDir
    from ferclean.store import Store

    md = ModelDir(model_dir)
    meta = md.meta()
    classes = list(meta["classes"])
    p = Store(run_out).read("predictions").to_pandas()
    q = p[(p.method == meta["method"]) & (p.fold >= 0)].set_index("sample_id")
    ref = _reference(Store(run_out), classes).loc[q.index]
    # label_noise as the train stage now saves it: the noise matrix of the verdict rule's confident joint
    # on the out-of-fold scores (network x AU view, calibrated)
    from bench_common import oof_inputs

    from ferclean.au_view import combine
    from ferclean.noise import RelabelConfig, decide, noise_matrix, view_accuracies

    x = oof_inputs(p, meta["method"], list(q.index))
    labels = ref["label"].to_numpy()
    rule = RelabelConfig()
    acc = view_accuracies(labels, x["probs"], x["au_probs"])
    d = decide(labels, combine(x["probs"], x["au_probs"], rule.au_view_weight), x["alpha"], x["sem"], rule,
               label_accuracy=acc["label_accuracy"] if acc else None,
               model_accuracy=acc["model_accuracy"] if acc else None)
    meta.setdefault("label_noise", noise_matrix(d.joint).round(5).tolist())  # what is there stays
    if acc and "label_accuracy" not in meta.get("confidence_profile", {}):
        meta["confidence_profile"] = {**meta.get("confidence_profile", {}), "label_accuracy": acc["label_accuracy"]}
    md.write_meta(meta)
    return {"model": model_dir, "rows": len(q), "label_accuracy": acc["label_accuracy"] if acc else None}


def load_scores(out: str) -> dict:
    """A relabel-collection run's stored scores: its model's meta, the network's and the AU view's probabilities
    per sample, and the given labels, crowd plurality and votes (quality_small's reference)."""
    from quality_small import _reference

    from ferclean.au_view import AU_VIEW_METHOD
    from ferclean.model_dir import ModelDir
    from ferclean.store import Store

    store = Store(out)
    c = json.loads(store.read("runs").to_pandas()["config"].iloc[-1])
    model_dir = c.get("model_dir") or c["score"]["model_dir"]
    meta = ModelDir(model_dir).meta()
    classes, method = list(meta["classes"]), meta["method"]
    p = store.read("predictions").to_pandas()
    net = p[(p.method == method) & (p.fold == -1)].set_index("sample_id")
    ids = list(net.index)
    probs = np.stack(net.loc[ids, "probs"].to_numpy()).astype(np.float64)
    au = p[(p.method == AU_VIEW_METHOD) & (p.fold == -1)].set_index("sample_id")
    au_probs = np.full_like(probs, np.nan)
    have = [i for i, s in enumerate(ids) if s in au.index]
    au_probs[have] = np.stack(au.loc[[ids[i] for i in have], "probs"].to_numpy())
    df = _reference(store, classes).loc[ids]
    return {"model_dir": model_dir, "meta": meta, "classes": classes, "method": method, "ids": ids, "probs": probs,
            "au": au_probs, "labels": df["label"].to_numpy(), "plural": df["plural"].to_numpy(),
            "ev": df["ev"].to_numpy()}


def decide_scores(d: dict, **upd) -> tuple:
    """Re-decide `load_scores` output under RelabelConfig fields `upd` (the guard's checks recomputed):
    (verdict table, actions, suggested indices, quality_small score, trust info, shift report)."""
    from quality_small import _score

    from ferclean.noise import RelabelConfig, final_labels
    from ferclean.relabel import collection_shift, verdict_rows

    meta, classes, method, ids = d["meta"], d["classes"], d["method"], d["ids"]
    cfg = RelabelConfig(method=method, train_prior=meta.get("train_label_prior"), **upd)
    names = [classes[k] if k >= 0 else None for k in d["labels"]]
    rep = collection_shift(meta, d["probs"], names, classes, d["au"], cfg, None)
    info: dict = {}
    t = verdict_rows(ids, names, classes, d["probs"], None, None, np.ones(len(ids), bool), [None] * len(ids), cfg,
                     "x", method, au_probs=d["au"], trust=info,
                     review_reason="domain_shift" if rep["shifted"] and cfg.domain_shift_guard else None,
                     model_accuracy=(meta.get("confidence_profile") or {}).get("model_accuracy"),
                     reference_noise=meta.get("label_noise"))
    act = np.array(t["action"].to_pylist(), dtype=object)
    sug = np.array([classes.index(x) for x in t["label_suggested"].to_pylist()])
    fin = final_labels(d["labels"], act, sug)
    return t, act, sug, _score(classes, d["labels"], d["plural"], d["ev"], act, fin), info, rep


def redecide(out: str, variants: dict[str, dict]) -> dict:
    """Re-decide a relabel-collection run's verdicts from its stored scores under rule variants
    (RelabelConfig fields; the guard's checks recomputed each time): relabelled share and gain vs crowd."""
    d = load_scores(out)
    res: dict = {"out": out, "model": d["model_dir"], "rows": len(d["ids"])}
    for vname, upd in variants.items():
        _, act, _, sc, _, rep = decide_scores(d, **upd)
        res[vname] = {"relabelled_share": round(float((act == "relabel").mean()), 4),
                      "review_share": round(float((act == "review").mean()), 4), "f1": sc["f1"],
                      "gain_points": sc["gain_points"], "relabel_right": sc["relabel_right"],
                      "shifted": rep["shifted"], "failed": rep["failed"],
                      "checks": {k: v["value"] for k, v in rep["checks"].items()}}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="phase", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--n", type=int, default=1500)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--split", default="valid", help="labels.csv split to draw faces from")
    m.add_argument("--exclude", help="a manifest whose image_path rows are left out (the model's training rows)")
    c = sub.add_parser("crops", help="in-domain counterpart: FER2013 crops with their FER2013 labels")
    for k, v in (("--out", None), ("--n", 3000), ("--seed", 0), ("--split", "train"), ("--exclude", None)):
        c.add_argument(k, default=v, type=int if isinstance(v, int) else str, required=k == "--out")
    e = sub.add_parser("eval")
    e.add_argument("--run", action="append", default=[], help="NAME=OUT of a relabel-collection run")
    b = sub.add_parser("backfill", help="add label_noise and the training labels' accuracy estimate to a model saved "
                       "before the train stage wrote them")
    b.add_argument("--model", required=True)
    b.add_argument("--run-out", required=True)
    r = sub.add_parser("redecide", help="re-decide stored relabel-collection scores under rule variants")
    r.add_argument("--run", action="append", default=[], help="NAME=OUT")
    r.add_argument("--variant", action="append", default=[], help='NAME=JSON RelabelConfig fields')
    a = ap.parse_args()
    if a.phase == "make":
        _merge(f"make_{a.split}", make(a.out, a.n, a.seed, a.split, a.exclude))
    elif a.phase == "crops":
        _merge(f"crops_{a.split}", crops(a.out, a.n, a.seed, a.split, a.exclude))
    elif a.phase == "backfill":
        print(backfill(a.model, a.run_out))
    elif a.phase == "redecide":
        variants = {"default": {}}
        variants.update({v.split("=", 1)[0]: json.loads(v.split("=", 1)[1]) for v in a.variant})
        for spec in a.run:
            name, out = spec.split("=", 1)
            _merge(f"redecide_{name}", redecide(out, variants))
    else:
        for spec in a.run:
            name, out = spec.split("=", 1)
            _merge(name, evaluate(out))


if __name__ == "__main__":
    main()

"""Curation quality as a user meets it on a small new collection (issue 17), against the FER+ crowd.

Arms, all on the FER2013 valid split (3,579 faces, nobody tuned on it) unless said otherwise:
  alone     `ferclean curate valid.csv` (every default but the fast train config below)
  init      the same with `--init-model SRC/model` (a curate run on a train-split subset)
  rc        `ferclean relabel-collection valid.csv --model SRC/model`
  peer      a plain CNN (the project's compact CNN, method ce, same input size / width / epochs),
            3-fold out-of-fold probabilities + cleanlab `find_label_issues`, argmax relabel
  shift     the SRC model scoring (a) valid crops as they are and (b) the same crops degraded,
            recoloured, upscaled and re-cropped, with the FER+ plurality as the given labels (labels
            that are mostly right): share relabelled with the domain-shift guard on and off

A flag is action relabel or review; a true issue is label != FER+ plurality; rows whose plurality
is not one of the 7 classes or whose label is ambiguous are left out; a dropped sample counts with
its original label. For curate runs the verdicts are also re-decided from the stored predictions
with `trust: off` (the previous rule) to show what the trust rule changed.

    python benchmarks/quality_small.py eval --run alone=OUT1 --run init=OUT2 --run rc=OUT3
    python benchmarks/quality_small.py peer --size 32 --width 16 --epochs 6
    python benchmarks/quality_small.py shift --model SRC/model
Each phase merges its numbers into benchmarks/results/quality_small.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.compute as pc

from bench_common import PLURALITY, oof_inputs, prf

from ferclean.au_view import AU_VIEW_METHOD
from ferclean.noise import RelabelConfig, final_labels, prior_from_counts
from ferclean.relabel import collection_shift, verdict_rows
from ferclean.store import Store

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013"
RESULTS = Path(__file__).resolve().parent / "results" / "quality_small.json"


def _merge(key: str, value: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    cur = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    cur[key] = value
    RESULTS.write_text(json.dumps(cur, indent=2, default=str))
    print(json.dumps({key: value}, indent=1, default=str), flush=True)


def _score(classes: list[str], labels: np.ndarray, plural: np.ndarray, ev: np.ndarray, action: np.ndarray,
           final: np.ndarray) -> dict:
    flag = np.isin(action, ["relabel", "review"])
    fin = np.where(final >= 0, final, labels)  # a drop keeps its original label here
    rel = (action == "relabel") & ev
    out = prf(flag[ev], (labels != plural)[ev])
    out.update({
        "eval_rows": int(ev.sum()), "relabel": int(rel.sum()), "review": int(((action == "review") & ev).sum()),
        "relabel_right": round(float((fin[rel] == plural[rel]).mean()), 4) if rel.any() else None,
        "replaced_right": round(float((labels[rel] == plural[rel]).mean()), 4) if rel.any() else None,
        "acc_before": round(float((labels[ev] == plural[ev]).mean()), 4),
        "acc_after": round(float((fin[ev] == plural[ev]).mean()), 4),
    })
    out["gain_points"] = round(100 * (out["acc_after"] - out["acc_before"]), 2)
    return out


def _reference(store: Store, classes: list[str]) -> pd.DataFrame:
    s = store.read("samples", columns=["sample_id", "label_original", "ferplus_majority", "label_ambiguous"])
    df = s.to_pandas().set_index("sample_id")
    df["plural"] = df["ferplus_majority"].map(PLURALITY).map(lambda p: classes.index(p) if p in classes else -1)
    df["label"] = df["label_original"].map(lambda p: classes.index(p) if p in classes else -1)
    df["ev"] = (df["plural"] >= 0) & (df["label"] >= 0) & ~df["label_ambiguous"].fillna(False).astype(bool)
    return df


def eval_run(out: str) -> dict:
    """The latest model verdicts of a curate / relabel-collection run; for curate runs also the verdicts
    re-decided from the stored out-of-fold predictions under trust off and trust auto."""
    store = Store(out)
    rel = store.read("relabels")
    rel = rel.filter(pc.equal(rel["source"], "model"))
    last = sorted(set(rel["run_id"].to_pylist()))[-1]
    rel = rel.filter(pc.equal(rel["run_id"], last)).to_pandas().set_index("sample_id")
    preds = store.read("predictions", columns=["class_order"])
    classes = str(preds["class_order"][0].as_py()).split(",")
    df = _reference(store, classes).loc[rel.index]
    labels, plural, ev = df["label"].to_numpy(), df["plural"].to_numpy(), df["ev"].to_numpy()
    final = rel["label_final"].map(lambda p: classes.index(p) if p in classes else -1).to_numpy()
    res = {"out": out, "run_id": last, "verdicts": _score(classes, labels, plural, ev, rel["action"].to_numpy(), final)}
    runs = store.read("runs").to_pandas()
    row = runs[runs.run_id == last]
    if len(row):
        counts = json.loads(row["counts"].iloc[0])
        res["trust_counts"] = {k: v for k, v in counts.items() if k.startswith("relabel.trust") or k == "relabel.domain_shift"}
        res["config_init_model"] = json.loads(row["config"].iloc[0]).get("init_model")
    p = store.read("predictions").to_pandas()
    method = rel["method"].iloc[0]
    oof = p[(p.method == method) & (p.fold >= 0)].set_index("sample_id")
    if len(oof):  # a curate run: re-decide with the previous rule and the trust rule from the same scores
        ids = list(df.index)
        x = oof_inputs(p, method, ids)
        probs, au_probs, alpha, sem, have = x["probs"], x["au_probs"], x["alpha"], x["sem"], x["au_probs"] is not None
        names = [classes[k] if k >= 0 else None for k in labels]
        variants = {"previous_rule": {"trust": "off", "relabel_floor": 0.0},  # the rule before issue 17
                    "floor_only": {"trust": "off"}, "new_default": {},
                    # a 100-face audit: the class mix of 100 random faces' crowd labels as the class prior
                    "new_default_audit100": {"class_prior": prior_from_counts(np.bincount(
                        plural[np.random.default_rng(0).choice(np.flatnonzero(ev), 100, replace=False)],
                        minlength=len(classes)))}}
        for vname, upd in variants.items():
            info: dict = {}
            t = verdict_rows(ids, names, classes, probs, alpha, sem, np.ones(len(ids), bool), [None] * len(ids),
                             RelabelConfig(method=method, **upd), "x", method,
                             au_probs=au_probs if have else None, trust=info)
            act = np.array(t["action"].to_pylist(), dtype=object)
            fin = final_labels(labels, act, np.array([classes.index(s) for s in t["label_suggested"].to_pylist()]))
            res[f"redecided_{vname}"] = {**_score(classes, labels, plural, ev, act, fin), "trust": info}
        res["oof_model_acc"] = round(float((probs.argmax(1) == plural)[ev].mean()), 4)
    return res


def _valid_rows() -> pd.DataFrame:
    df = pd.read_csv(ROOT / "labels.csv")
    df = df[df.split == "valid"].reset_index(drop=True)
    df["plurality"] = df["ferplus_majority"].map(PLURALITY)
    df["ev"] = df["plurality"].notna() & ~df["label_ambiguous"].astype(bool)
    return df


def peer(size: int, width: int, epochs: int) -> dict:
    """Plain CNN (ce), 3-fold out-of-fold probabilities + cleanlab find_label_issues, on the valid rows."""
    from cleanlab.filter import find_label_issues

    from ferclean.classes import FER7
    from ferclean.train.config import TrainConfig
    from ferclean.train.data import decode_crops
    from ferclean.train.stage import crossfit

    df = _valid_rows()
    images = decode_crops([ROOT / p for p in df.image_path], size)
    labels = np.array([FER7.index(x) for x in df.label])
    plural = np.array([FER7.index(p) if isinstance(p, str) else -1 for p in df.plurality])
    cfg = TrainConfig(input_size=size, width=width, epochs=epochs, folds=3, backbone="cnn", checkpoint=False,
                      methods=["ce"])
    t = time.time()
    probs = crossfit(images, labels, "ce", cfg)["probs"].astype(np.float64)
    secs = time.time() - t
    probs /= probs.sum(1, keepdims=True)
    issues = find_label_issues(labels, probs)
    fin = np.where(issues, probs.argmax(1), labels)
    act = np.where(issues, "relabel", "keep").astype(object)
    ev = df["ev"].to_numpy()
    return {**_score(list(FER7), labels, plural, ev, act, fin), "crossfit_seconds": round(secs, 1),
            "config": {"size": size, "width": width, "epochs": epochs, "method": "ce", "folds": 3},
            "oof_model_acc": round(float((probs.argmax(1) == plural)[ev].mean()), 4)}


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop from another camera and framing: re-cropped wider (face smaller, off-centre), downscaled to 20 px
    and upscaled back (soft), recoloured (gamma, contrast), sensor noise and JPEG at quality 25."""
    s = img.shape[0]
    pad = int(s * 0.35)
    big = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    dx, dy = rng.integers(-pad // 2, pad // 2 + 1, 2)
    x = big[pad // 2 + dy: pad // 2 + dy + s + pad, pad // 2 + dx: pad // 2 + dx + s + pad]
    x = cv2.resize(cv2.resize(x, (20, 20), interpolation=cv2.INTER_AREA), (s, s), interpolation=cv2.INTER_CUBIC)
    g = rng.uniform(0.5, 1.8)
    x = 255.0 * (x / 255.0) ** g
    x = (x - x.mean()) * rng.uniform(0.5, 0.8) + x.mean() + rng.uniform(-30, 30)
    x = np.clip(x + rng.normal(0, 8, x.shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, 25])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def shift(model_dir: str, n: int) -> dict:
    """The guard on an in-domain and a shifted collection whose given labels are the FER+ plurality."""
    from ferclean.train.model_io import load_model, score

    model = load_model(model_dir)
    classes = model.classes
    size = int(model.meta["input_size"])
    df = _valid_rows()
    df = df[df["ev"]].sample(n=min(n, int(df["ev"].sum())), random_state=0).reset_index(drop=True)
    imgs = [cv2.imread(str(ROOT / p), cv2.IMREAD_GRAYSCALE) for p in df.image_path]
    rng = np.random.default_rng(0)
    shifted = [degrade(im, rng) for im in imgs]
    out: dict = {"model": model_dir, "rows": len(df), "labels": "FER+ plurality (mostly right by construction)",
                 "model_has_profile": "confidence_profile" in model.meta}
    names = list(df.plurality)
    for name, crops in (("in_domain", imgs), ("shifted", shifted)):
        arr = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in crops])
        probs, _, _, emb = score(model, arr)
        probs = probs.astype(np.float64)
        for guard in (False, True):
            cfg = RelabelConfig(domain_shift_guard=guard, train_prior=model.meta.get("train_label_prior"))
            rep = collection_shift(model.meta, probs, names, classes, None, cfg, emb)
            t = verdict_rows([str(i) for i in range(len(df))], names, classes, probs, None, None,
                             np.ones(len(df), bool), [None] * len(df), cfg, "x", "m",
                             review_reason="domain_shift" if rep["shifted"] and guard else None)
            acts = t["action"].to_pylist()
            out[f"{name}_guard_{'on' if guard else 'off'}"] = {
                "relabelled_share": round(acts.count("relabel") / len(acts), 4),
                "review_share": round(acts.count("review") / len(acts), 4),
                "shifted": rep["shifted"], "failed": rep["failed"], "checks": rep["checks"]}
        if name == "shifted":
            cv2.imwrite(str(RESULTS.parent / "quality_small_shifted_examples.png"),
                        np.vstack([np.hstack(imgs[:8]), np.hstack(crops[:8])]))
    return out


def profile_backfill(model_dir: str, run_out: str) -> dict:
    """Write `confidence_profile` into a model saved before profiles existed, as the train stage now does:
    the final model's predictions on its training data (fold -1) and the out-of-fold label-free estimate of
    the network's accuracy."""
    from ferclean.domain_shift import confidence_profile
    from ferclean.model_dir import ModelDir
    from ferclean.noise import view_accuracies

    md = ModelDir(model_dir)
    meta = md.meta()
    store = Store(run_out)
    p = store.read("predictions").to_pandas()
    classes = list(meta["classes"])

    def probs_of(method: str, oof: bool, ids=None):  # noqa: ANN001, ANN202
        q = p[(p.method == method) & ((p.fold >= 0) if oof else (p.fold == -1))].set_index("sample_id")
        ids = list(q.index) if ids is None else ids
        return ids, np.stack(q.loc[ids, "probs"].to_numpy())

    ids, final = probs_of(meta["method"], False)
    ref = _reference(store, classes).loc[ids]
    _, oof = probs_of(meta["method"], True, ids)
    _, au = probs_of(AU_VIEW_METHOD, True, ids)
    acc = view_accuracies(ref["label"].to_numpy(), oof, au)
    from ferclean.train.model_io import load_model, score
    from ferclean.train.stage import load_inputs

    inputs = load_inputs(store, classes, None, int(meta["input_size"]))
    pos = {sid: i for i, sid in enumerate(inputs.sample_ids)}
    emb = score(load_model(md), inputs.images)[3][[pos[i] for i in ids]]
    meta["confidence_profile"] = {**confidence_profile(final, ref["label"].to_numpy(), au, emb),
                                  "model_accuracy": acc["model_accuracy"]}
    md.write_meta(meta)
    return meta["confidence_profile"]


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="phase", required=True)
    e = sub.add_parser("eval")
    e.add_argument("--run", action="append", default=[], help="NAME=OUT")
    p = sub.add_parser("peer")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=6)
    s = sub.add_parser("shift")
    s.add_argument("--model", required=True)
    s.add_argument("--n", type=int, default=2000)
    b = sub.add_parser("backfill")
    b.add_argument("--model", required=True)
    b.add_argument("--run-out", required=True)
    a = ap.parse_args()
    if a.phase == "eval":
        for spec in a.run:
            name, out = spec.split("=", 1)
            _merge(name, eval_run(out))
    elif a.phase == "peer":
        _merge("peer", peer(a.size, a.width, a.epochs))
    elif a.phase == "shift":
        _merge("shift", shift(a.model, a.n))
    else:
        _merge("src_profile_backfill", profile_backfill(a.model, a.run_out))


if __name__ == "__main__":
    main()

"""The verdict rules on a curate run's out-of-fold scores, scored against the FER+ plurality.

Reads a FER2013 curate run's cross-fitted predictions (the final method's folds 0..K-1 and the AU
view's), re-decides every scored sample of one split with each rule variant (`verdict_rows`, no
dataset-issue drops, no final model: the same scores for every rule), and reports flag P/R/F1 and
final-label accuracy before/after; with a simulated 100-face audit (20 random draws, scored on
the rows not audited) for the default rule.

    python benchmarks/oof_rules.py RUN [--split train] [--save NAME]

Needs ../shared/data/fer2013 (the run's samples carry its FER+ columns).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench_common import RESULTS, oof_inputs
from quality_small import _reference, _score

from ferclean.au_view import AU_VIEW_METHOD
from ferclean.noise import RelabelConfig, final_labels, prior_from_counts
from ferclean.relabel import verdict_rows
from ferclean.store import Store

VARIANTS = {
    "previous_rule (session 4)": {"trust": "off", "relabel_floor": 0.0},
    "floor_only": {"trust": "off"},
    "trust_only": {"relabel_floor": 0.0},
    "new_default": {},
}


def redecide(out: str, split: str, audits: int = 20) -> dict:
    store = Store(out)
    preds = store.read("predictions").to_pandas()
    classes = str(preds["class_order"].iloc[0]).split(",")
    oof_all = preds[(preds.fold >= 0) & (preds.method != AU_VIEW_METHOD)]
    method = oof_all["method"].iloc[0]
    ref = _reference(store, classes)
    splits = store.read("samples", columns=["sample_id", "split"]).to_pandas().set_index("sample_id")["split"]
    ids = [s for s in oof_all[oof_all.method == method]["sample_id"] if splits.get(s) == split]
    df = ref.loc[ids]
    labels, plural, ev = df["label"].to_numpy(), df["plural"].to_numpy(), df["ev"].to_numpy()
    x = oof_inputs(preds, method, ids)
    probs, au_probs, alpha, sem = x["probs"], x["au_probs"], x["alpha"], x["sem"]
    names = [classes[k] if k >= 0 else None for k in labels]

    def run(cfg: RelabelConfig, rows: np.ndarray) -> dict:
        info: dict = {}
        t = verdict_rows(ids, names, classes, probs, alpha, sem, np.ones(len(ids), bool), [None] * len(ids), cfg,
                         "x", method, au_probs=au_probs, trust=info)
        act = np.array(t["action"].to_pylist(), dtype=object)
        fin = final_labels(labels, act, np.array([classes.index(s) for s in t["label_suggested"].to_pylist()]))
        return {**_score(classes, labels, plural, ev & rows, act, fin), "trust": info}

    res: dict = {"out": out, "split": split, "method": method, "rows": len(ids),
                 "oof_network_acc": round(float((probs.argmax(1) == plural)[ev].mean()), 4)}
    everyone = np.ones(len(ids), bool)
    for name, upd in VARIANTS.items():
        res[name] = run(RelabelConfig(method=method, **upd), everyone)
    rng = np.random.default_rng(0)
    for name, upd in VARIANTS.items():
        gains, f1s = [], []
        for _ in range(audits):
            pick = rng.choice(np.flatnonzero(ev), 100, replace=False)
            prior = prior_from_counts(np.bincount(plural[pick], minlength=len(classes)))
            rows = everyone.copy()
            rows[pick] = False
            r = run(RelabelConfig(method=method, class_prior=prior, **upd), rows)
            gains.append(r["gain_points"])
            f1s.append(r["f1"])
        res[f"{name} + audit100"] = {"gain_points_mean": round(float(np.mean(gains)), 2),
                                     "gain_points_sd": round(float(np.std(gains)), 2),
                                     "f1_mean": round(float(np.mean(f1s)), 4), "draws": audits}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--split", default="train")
    ap.add_argument("--audits", type=int, default=20)
    ap.add_argument("--save", help="file name under benchmarks/results")
    a = ap.parse_args()
    res = redecide(a.out, a.split, a.audits)
    text = json.dumps(res, indent=1, default=str)
    print(text)
    if a.save:
        Path(RESULTS, a.save).write_text(text + "\n")


if __name__ == "__main__":
    main()

"""The AU view's weight in the verdicts when the network is weaker than the labels (`au_view_weight_weak`).

Re-decides curate runs' stored out-of-fold scores (network and AU view, `verdict_rows`, no dataset-issue
drops) with the weak-network weight set to each value, and scores flags and final labels against the FER+
plurality. The setting was chosen on two FER2013 train-row runs curated alone; the valid split was the
confirmation.

    python benchmarks/view_weight.py --run dev3000=/tmp/fer18/run:train --run dev8000=/tmp/q17/src:train \
        --run valid=/tmp/q17/alone:valid --save view_weight

Needs ../shared/data/fer2013 (the runs' samples carry its FER+ columns).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from bench_common import RESULTS, oof_inputs
from quality_small import _reference, _score

from ferclean.au_view import AU_VIEW_METHOD
from ferclean.model_dir import INIT_MODEL_METHOD
from ferclean.noise import RelabelConfig, final_labels
from ferclean.relabel import verdict_rows
from ferclean.store import Store

WEIGHTS = (0.5, 1.0, 1.5, 2.0, 3.0)


def redecide(out: str, split: str, weights: tuple[float, ...] = WEIGHTS) -> dict:
    store = Store(out)
    preds = store.read("predictions").to_pandas()
    classes = str(preds["class_order"].iloc[0]).split(",")
    oof = preds[(preds.fold >= 0) & ~preds.method.isin([AU_VIEW_METHOD, INIT_MODEL_METHOD])]
    method = oof["method"].iloc[0]
    splits = store.read("samples", columns=["sample_id", "split"]).to_pandas().set_index("sample_id")["split"]
    ids = [s for s in oof[oof.method == method]["sample_id"] if splits.get(s) == split]
    df = _reference(store, classes).loc[ids]
    labels, plural, ev = df["label"].to_numpy(), df["plural"].to_numpy(), df["ev"].to_numpy()
    x = oof_inputs(preds, method, ids)
    names = [classes[k] if k >= 0 else None for k in labels]
    res: dict = {"out": out, "split": split, "rows": len(ids),
                 "true_accuracy_vs_crowd": {
                     "labels": round(float((labels == plural)[ev].mean()), 4),
                     "network": round(float((x["probs"].argmax(1) == plural)[ev].mean()), 4),
                     "au_view": round(float((np.nan_to_num(x["au_probs"]).argmax(1) == plural)[ev].mean()), 4)
                     if x["au_probs"] is not None else None}}
    for w in weights:
        info: dict = {}
        t = verdict_rows(ids, names, classes, x["probs"], x["alpha"], x["sem"], np.ones(len(ids), bool),
                         [None] * len(ids), RelabelConfig(method=method, au_view_weight_weak=w), "x", method,
                         au_probs=x["au_probs"], trust=info)
        act = np.array(t["action"].to_pylist(), dtype=object)
        fin = final_labels(labels, act, np.array([classes.index(s) for s in t["label_suggested"].to_pylist()]))
        sc = _score(classes, labels, plural, ev, act, fin)
        res[f"w={w}"] = {"f1": sc["f1"], "gain_points": sc["gain_points"], "relabel": sc["relabel"],
                         "weight_used": info.get("au_view_weight"),
                         "estimates": {k: info.get(k) for k in ("label_accuracy", "model_accuracy", "au_view_accuracy")}}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="NAME=OUT:SPLIT of a curate run")
    ap.add_argument("--save", help="write benchmarks/results/NAME.json")
    a = ap.parse_args()
    out = {}
    for spec in a.run:
        name, rest = spec.split("=", 1)
        path, split = rest.rsplit(":", 1)
        out[name] = redecide(path, split)
        print(json.dumps({name: out[name]}, indent=1), flush=True)
    if a.save:
        (RESULTS / f"{a.save}.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

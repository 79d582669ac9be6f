"""Does the --init-model's own opinion help a warm-started curate run? (issue 17, "every model you already have
makes the next run better")

A `curate --init-model SRC` run fine-tunes every fold on the collection's own (noisy) labels; its out-of-fold
probabilities then follow those labels more than SRC's. `relabel-collection --model SRC` on the same
collection scores it with SRC alone. This re-decides the warm-started run's verdicts from a mix of the two:

    p = (1 - w) * p_oof + w * p_src        (w = 0: the run as it is; w = 1: SRC alone)

with the run's AU view, every default of the verdict rule, scored against the FER+ plurality.

    python benchmarks/init_ensemble.py --init INIT_RUN --src-scores RC_RUN --name NAME [--w 0 0.25 0.5 0.75 1]

INIT_RUN: a `curate --init-model SRC` run; RC_RUN: `relabel-collection --model SRC` on the same manifest
(same sample ids). Results merged into benchmarks/results/init_ensemble.json.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from bench_common import RESULTS, oof_inputs
from quality_small import _reference, _score

from ferclean.noise import RelabelConfig, final_labels
from ferclean.relabel import verdict_rows
from ferclean.store import Store

OUT = RESULTS / "init_ensemble.json"


def mix(init_run: str, src_run: str, ws: list[float]) -> dict:
    store = Store(init_run)
    preds = store.read("predictions").to_pandas()
    method = "ulcag"
    src = Store(src_run).read("predictions").to_pandas()
    src = src[(src.method == method) & (src.fold == -1)].set_index("sample_id")
    oof_ids = set(preds[(preds.method == method) & (preds.fold >= 0)].sample_id)
    classes = str(preds["class_order"].iloc[0]).split(",")
    ref = _reference(store, classes)
    ids = [s for s in ref.index if s in oof_ids and s in src.index]
    x = oof_inputs(preds, method, ids)
    p_src = np.stack(src.loc[ids, "probs"].to_numpy()).astype(np.float64)
    ref = ref.loc[ids]
    labels, plural, ev = ref["label"].to_numpy(), ref["plural"].to_numpy(), ref["ev"].to_numpy()
    names = [classes[k] if k >= 0 else None for k in labels]
    out: dict = {"init_run": init_run, "src_run": src_run, "rows": len(ids)}
    for w in ws:
        probs = (1 - w) * x["probs"] + w * p_src
        info: dict = {}
        t = verdict_rows(ids, names, classes, probs, None, None, np.ones(len(ids), bool), [None] * len(ids),
                         RelabelConfig(method=method), "x", method, au_probs=x["au_probs"], trust=info)
        act = np.array(t["action"].to_pylist(), dtype=object)
        fin = final_labels(labels, act, np.array([classes.index(s) for s in t["label_suggested"].to_pylist()]))
        sc = _score(classes, labels, plural, ev, act, fin)
        out[f"w={w}"] = {"f1": sc["f1"], "gain_points": sc["gain_points"], "relabel": sc["relabel"],
                         "relabel_right": sc["relabel_right"],
                         "net_acc_vs_crowd": round(float((probs.argmax(1) == plural)[ev].mean()), 4),
                         "trust": {k: info.get(k) for k in ("label_accuracy", "model_accuracy", "shrink")}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True)
    ap.add_argument("--src-scores", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--w", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    a = ap.parse_args()
    res = mix(a.init, a.src_scores, a.w)
    cur = json.loads(OUT.read_text()) if OUT.exists() else {}
    cur[a.name] = res
    OUT.write_text(json.dumps(cur, indent=2))
    for k, v in res.items():
        if k.startswith("w="):
            print(a.name, k, {m: v[m] for m in ("f1", "gain_points", "relabel", "relabel_right", "net_acc_vs_crowd")},
                  v["trust"])


if __name__ == "__main__":
    main()

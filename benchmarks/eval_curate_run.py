"""Score a finished `ferclean curate` run on FER2013 against the FER+ crowd (no training here).

Reads OUT's `samples` and the model verdicts of its latest relabel run (`relabels`, source =
model), keeps the train-split rows whose FER+ plurality is one of the 7 classes and whose label is
not ambiguous, and reports: flags (action relabel or review) vs (FER label != plurality) as
precision / recall / F1; agreement of `label_final` with the plurality before (raw labels) and
after, with dropped samples (duplicates, leaks) counted once as keeping their raw label and once
left out; and cleanlab's find_label_issues on the same run's out-of-fold probabilities.

    python benchmarks/eval_curate_run.py OUT [--split train] [--out results/NAME.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from bench_common import PLURALITY, prf

from ferclean.classes import FER7  # noqa: E402
from ferclean.store import Store  # noqa: E402


def evaluate(out: Path, split: str = "train") -> dict:
    store = Store(out)
    s = store.read("samples", columns=["sample_id", "split", "label_original", "ferplus_majority", "label_ambiguous"])
    s = s.filter(pc.equal(s["split"], split))
    rel = store.read("relabels", columns=["run_id", "sample_id", "action", "label_final", "source", "method"])
    rel = rel.filter(pc.equal(rel["source"], "model"))
    last_run = sorted(set(rel["run_id"].to_pylist()))[-1]
    rel = rel.filter(pc.equal(rel["run_id"], last_run))
    verdict = {r["sample_id"]: r for r in rel.to_pylist()}
    ids = s["sample_id"].to_pylist()
    raw = np.array([FER7.index(x) if x in FER7 else -1 for x in s["label_original"].to_pylist()])
    plural = np.array([FER7.index(PLURALITY[p]) if p in PLURALITY else -1 for p in s["ferplus_majority"].to_pylist()])
    ev = (plural >= 0) & (raw >= 0) & ~np.array([bool(x) for x in s["label_ambiguous"].to_pylist()])
    action = np.array([(verdict.get(i) or {}).get("action") or "none" for i in ids])
    final = np.array([FER7.index(f) if (f := (verdict.get(i) or {}).get("label_final")) in FER7 else -1 for i in ids])
    flag = np.isin(action, ["relabel", "review"])
    truth = raw != plural
    dropped = action == "drop"
    final_or_raw = np.where(final >= 0, final, raw)
    kept = ev & ~dropped
    res = {
        "out": str(out), "relabel_run": last_run, "split": split, "rows": len(ids), "eval_rows": int(ev.sum()),
        "noise_rate": round(float(truth[ev].mean()), 4),
        "actions": {a: int((action[ev] == a).sum()) for a in sorted(set(action[ev]))},
        "flags": prf(flag[ev], truth[ev]),
        "raw_accuracy": round(float((raw[ev] == plural[ev]).mean()), 4),
        "final_accuracy_drops_keep_raw": round(float((final_or_raw[ev] == plural[ev]).mean()), 4),
        "raw_accuracy_without_dropped": round(float((raw[kept] == plural[kept]).mean()), 4),
        "final_accuracy_without_dropped": round(float((final_or_raw[kept] == plural[kept]).mean()), 4),
        "relabels": int((action[ev] == "relabel").sum()),
        "relabels_right": int(((action == "relabel") & (final == plural))[ev].sum()),
    }
    preds = store.read("predictions", columns=["sample_id", "method", "fold", "probs"])
    preds = preds.filter(pc.greater_equal(preds["fold"], 0))
    if preds.num_rows:
        from cleanlab.filter import find_label_issues

        method = rel["method"][0].as_py()
        preds = preds.filter(pc.equal(preds["method"], method))
        p_of = dict(zip(preds["sample_id"].to_pylist(), preds["probs"].to_pylist(), strict=True))
        have = np.array([i in p_of for i in ids]) & ev
        probs = np.array([p_of[i] for i, h in zip(ids, have, strict=True) if h], np.float64)
        probs /= probs.sum(1, keepdims=True)
        issues = find_label_issues(raw[have], probs)
        res["cleanlab_same_probs"] = {"method": method, **prf(issues, truth[have])}
        res["f1_over_cleanlab_same_probs"] = round(res["flags"]["f1"] / max(res["cleanlab_same_probs"]["f1"], 1e-9), 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--split", default="train")
    ap.add_argument("--save", help="file name under benchmarks/results")
    args = ap.parse_args()
    res = evaluate(args.out, args.split)
    print(json.dumps(res, indent=1))
    if args.save:
        (Path(__file__).resolve().parent / "results" / args.save).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

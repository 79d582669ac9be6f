"""The AU view on FER2013's real label noise: verdicts from the network alone vs network x AU view.

Reads saved out-of-fold network scores (`noise_real_full.py --method ... --name NAME`, CACHE/NAME.npz,
3 folds, seed 0) and the intensities of a curate run's `aus` table, cross-fits the AU view
(`ferclean.au_view`, same folds as the network) on the FER2013 labels, and scores the default
verdict rule (`RelabelConfig()`, bayes) against the FER+ plurality: flags P/R/F1, relabels and
their precision, final-label accuracy; with no audit and with random 100-sample audits (as
`audit_curve.py`: the audit's class mix is the prior, scored on the rows not audited, 20 draws).
The weight is also scored on two random halves of the rows (the default, 0.5, was chosen on all rows
and on 10 % synthetic noise, and confirmed on 20 / 30 %: see noise_synthetic.md).

    python benchmarks/au_view_real.py --store RUN --aus-store AUSRUN --cache CACHE ulcag_default_bf16 ce_default_bf16
    # -> results/au_view_real.json / .md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench_common import RESULTS, aus_columns, final_accuracy, prf
from bench_common import load_train_split as load

from ferclean.au_view import combine, crossfit_au_view  # noqa: E402
from ferclean.classes import FER7  # noqa: E402
from ferclean.relabel import RelabelConfig, decide, final_labels, prior_from_counts  # noqa: E402
from ferclean.store import Store  # noqa: E402
from ferclean.train.stage import fold_assignment  # noqa: E402

def verdict_metrics(labels, plural, ev, z, probs, rows) -> dict:
    d = decide(labels, probs, None if z["alpha"].shape == () else z["alpha"],
               None if z["sem_dist"].shape == () else z["sem_dist"], RelabelConfig())
    fin = final_labels(labels, d.action, d.suggested)
    sel = ev & rows
    flag = np.isin(d.action, ["relabel", "review"])
    rel = (d.action == "relabel") & sel
    m = prf(flag[sel], (labels != plural)[sel])
    m.update({"relabel": int(rel.sum()), "relabel_precision": round(float((fin[rel] == plural[rel]).mean()), 4),
              "acc_raw": round(float((labels[sel] == plural[sel]).mean()), 4),
              "acc_final": round(float((fin[sel] == plural[sel]).mean()), 4)})
    return m


def audits(labels, plural, ev, z, probs, n: int = 100, draws: int = 20) -> dict:
    pool = np.flatnonzero(ev)
    accs, f1s = [], []
    for seed in range(draws):
        pick = np.random.default_rng(seed).choice(pool, n, replace=False)
        audited = np.zeros(len(labels), bool)
        audited[pick] = True
        prior = prior_from_counts(np.bincount(plural[pick], minlength=probs.shape[1]))
        acc, f1 = final_accuracy(labels, plural, ev, z, prior, audited, probs=probs)
        accs.append(acc)
        f1s.append(f1)
    return {"audit": n, "draws": draws, "acc_mean": round(float(np.mean(accs)), 4), "acc_sd": round(float(np.std(accs)), 4),
            "flag_f1": round(float(np.mean(f1s)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="curate run the scores were computed on (samples, FER+ columns)")
    ap.add_argument("--aus-store", required=True, help="curate run whose aus table gives the intensities")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--weights", default="0,0.25,0.5,1")
    ap.add_argument("scores", nargs="+")
    args = ap.parse_args()
    data = load(Store(args.store))
    labels, plural, ev = data["labels"], data["plural"], data["eval"]
    intensity, names = aus_columns(args.aus_store, data["ids"], "_r")
    folds = fold_assignment(labels, 3, 0)  # the folds noise_real_full.py's cross-fits used
    au = crossfit_au_view(intensity, labels, folds, len(FER7))
    half = np.random.default_rng(1).random(len(labels)) < 0.5
    res: dict = {"protocol": {"store": args.store, "aus_store": args.aus_store, "intensities": names,
                              "scored_rows": int(ev.sum()), "au_view_alone_acc": round(float((au.argmax(1)[ev] == plural[ev]).mean()), 4)},
                 "scores": {}}
    for name in args.scores:
        z = np.load(Path(args.cache) / f"{name}.npz", allow_pickle=True)
        out = {}
        for w in (float(x) for x in args.weights.split(",")):
            probs = combine(z["probs"].astype(np.float64), au, w)
            row = {"all": verdict_metrics(labels, plural, ev, z, probs, np.ones(len(labels), bool)),
                   "half_A": verdict_metrics(labels, plural, ev, z, probs, half),
                   "half_B": verdict_metrics(labels, plural, ev, z, probs, ~half)}
            if w in (0.0, RelabelConfig().au_view_weight):
                row["audit100"] = audits(labels, plural, ev, z, probs)
            out[str(w)] = row
            print(name, w, json.dumps(row), file=sys.stderr)
        res["scores"][name] = out
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "au_view_real.json").write_text(json.dumps(res, indent=1))
    lines = ["# The AU view on FER2013's real label noise", "",
             f"FER2013 train split, {res['protocol']['scored_rows']} rows scored against the FER+ plurality; "
             f"AU view alone (out of fold) agrees with the plurality on {res['protocol']['au_view_alone_acc']}. "
             "Verdicts: `RelabelConfig()` on p_network * p_au ** w. Command: see `benchmarks/au_view_real.py`.", "",
             "| scores | w | flags P / R / F1 | relabels (precision) | final acc (raw) | half A | half B | 100-sample audit: acc (F1) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, out in res["scores"].items():
        for w, row in out.items():
            a, au_ = row["all"], row.get("audit100")
            lines.append(f"| {name} | {w} | {a['precision']} / {a['recall']} / {a['f1']} | {a['relabel']} ({a['relabel_precision']}) | "
                         f"{a['acc_final']} ({a['acc_raw']}) | {row['half_A']['acc_final']} | {row['half_B']['acc_final']} | "
                         + (f"{au_['acc_mean']} ± {au_['acc_sd']} ({au_['flag_f1']})" if au_ else "") + " |")
    (RESULTS / "au_view_real.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

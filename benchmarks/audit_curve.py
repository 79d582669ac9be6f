"""How many audited samples does the bayes verdict rule need? (needs ../shared/data and saved scores)

Simulates `ferclean review export OUT --audit N` + import on the FER2013 train split: N rows are
drawn uniformly from the scored rows (FER+ plurality in the 7 classes, not ambiguous), the
reviewer's label is their FER+ plurality, their class mix becomes the rule's class prior exactly
as the relabel stage does (`relabel.prior_from_counts`), and the audited rows take the reviewer's
label. Final-label accuracy vs the plurality is scored on the rows that were NOT audited, so the
audited labels themselves earn nothing. `draws` random audits per N; mean and SD.

    python benchmarks/audit_curve.py --store RUN --cache /tmp/ferclean_noise_full ulcag_default ulcag_guard
    # -> results/audit_curve.json / .md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench_common import RESULTS, final_accuracy
from bench_common import load_train_split as load

from ferclean.relabel import prior_from_counts  # noqa: E402
from ferclean.store import Store  # noqa: E402

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--cache", default="/tmp/ferclean_noise_full")
    ap.add_argument("--sizes", default="0,50,100,150,250,500,1000")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("scores", nargs="+", help="score files (names without .npz) in --cache")
    args = ap.parse_args()
    data = load(Store(args.store))
    labels, plural, ev = data["labels"], data["plural"], data["eval"]
    raw = float((labels[ev] == plural[ev]).mean())
    pool = np.flatnonzero(ev)
    res: dict = {"rows": int(len(labels)), "scored_rows": int(ev.sum()), "raw_accuracy": round(raw, 4),
                 "draws": args.draws, "curves": {}}
    for name in args.scores:
        z = np.load(Path(args.cache) / f"{name}.npz", allow_pickle=True)
        curve = {}
        for n in (int(x) for x in args.sizes.split(",")):
            accs, f1s = [], []
            for seed in range(args.draws if n else 1):
                audited = np.zeros(len(labels), bool)
                prior = None
                if n:
                    pick = np.random.default_rng(seed).choice(pool, n, replace=False)
                    audited[pick] = True
                    prior = prior_from_counts(np.bincount(plural[pick], minlength=z["probs"].shape[1]))
                acc, f1 = final_accuracy(labels, plural, ev, z, prior, audited)
                accs.append(acc)
                f1s.append(f1)
            curve[n] = {"mean": round(float(np.mean(accs)), 4), "sd": round(float(np.std(accs)), 4),
                        "min": round(float(np.min(accs)), 4), "gain_points": round(100 * (float(np.mean(accs)) - raw), 1),
                        "flag_f1": round(float(np.mean(f1s)), 4)}
            print(name, n, curve[n], file=sys.stderr)
        res["curves"][name] = curve
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "audit_curve.json").write_text(json.dumps(res, indent=1))
    sizes = list(next(iter(res["curves"].values())))
    lines = ["# Final-label accuracy vs the size of a random human audit (simulated with FER+ labels)", "",
             f"FER2013 train split, {res['scored_rows']} scored rows, raw-label accuracy {res['raw_accuracy']}; "
             f"{args.draws} random audits per size; final-label accuracy (gain in points; flag F1) on the rows "
             "not audited; command in "
             "`benchmarks/audit_curve.py`.", "",
             "| scores | " + " | ".join(f"audit {n}" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for name, curve in res["curves"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{c['mean']:.3f} ± {c['sd']:.3f} ({c['gain_points']:+.1f}; F1 {c['flag_f1']:.3f})" for c in curve.values()) + " |")
    (RESULTS / "audit_curve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

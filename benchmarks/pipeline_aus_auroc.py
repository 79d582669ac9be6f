"""Prototype-AU AUROC of a curate run's own `aus` table on FER2013 (needs ../shared/data).

benchmarks/validate_aus.py recomputes landmarks and AUs in its own script; this reads what the
product wrote: run `ferclean curate ../shared/data/fer2013/labels.csv --out RUN --until aus`
(defaults), then `python benchmarks/pipeline_aus_auroc.py RUN`. Rows: FER+ plurality >= 7/10
votes; AU intensities of each image's primary face; mean prototype AUROC on train / valid / all,
AU12 for happy, 5-fold logistic-regression accuracy from the AU intensities.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from bench_common import FER as DATA
from bench_common import load_rows, lr_accuracy, prototype_aurocs

from ferclean.aus.names import AU_NAMES
from ferclean.primary import primary_aus
from ferclean.store import Store


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    store = Store(sys.argv[1])
    samples = store.read("samples", columns=["sample_id", "source_path"])
    by_path = {os.path.realpath(p): s for s, p in zip(samples["sample_id"].to_pylist(),
                                                       samples["source_path"].to_pylist(), strict=True)}
    aus = primary_aus(store, [f"{a}_r" for a in AU_NAMES])  # the primary face's AUs (ferclean.primary)
    row_of = {s: i for i, s in enumerate(aus["sample_id"].to_pylist())}
    inten = np.stack([aus[f"{a}_r"].to_numpy(zero_copy_only=False) for a in AU_NAMES], 1)
    rows = load_rows(7)
    sids = [by_path[os.path.realpath(str(DATA / p))] for p in rows.image_path]
    x = inten[[row_of[s] for s in sids]]
    truth = rows.truth.to_numpy()
    valid = (rows.split == "valid").to_numpy()
    out: dict = {"store": str(store.root), "rows": int(len(rows))}
    for name, sel in (("train", ~valid), ("valid", valid), ("all", np.ones(len(rows), bool))):
        a = prototype_aurocs(x[sel], truth[sel], AU_NAMES)
        out[name] = {"mean_prototype_auroc": round(float(np.mean([v for d in a.values() for v in d.values()])), 4),
                     "AU12_happy": round(a["happy"]["AU12"], 4)}
    out["lr_5fold_accuracy"], out["majority_rate"] = (round(v, 4) for v in lr_accuracy(x, truth))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

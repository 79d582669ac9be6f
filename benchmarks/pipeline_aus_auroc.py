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
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from validate_aus import DATA, load_rows, lr_accuracy, prototype_aurocs  # noqa: E402

from ferclean.aus.names import AU_NAMES  # noqa: E402
from ferclean.store import Store  # noqa: E402


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    store = Store(sys.argv[1])
    samples = store.read("samples", columns=["sample_id", "source_path"])
    by_path = {os.path.realpath(p): s for s, p in zip(samples["sample_id"].to_pylist(),
                                                       samples["source_path"].to_pylist(), strict=True)}
    faces = store.read("faces", columns=["sample_id", "face_index"], filter=pc.field("is_primary"))
    primary = dict(zip(faces["sample_id"].to_pylist(), faces["face_index"].to_pylist(), strict=True))
    aus = store.read("aus")
    row_of = {k: i for i, k in enumerate(zip(aus["sample_id"].to_pylist(), aus["face_index"].to_pylist(), strict=True))}
    inten = np.stack([aus[f"{a}_r"].to_numpy(zero_copy_only=False) for a in AU_NAMES], 1)
    rows = load_rows(7)
    sids = [by_path[os.path.realpath(str(DATA / p))] for p in rows.image_path]
    x = inten[[row_of[(s, primary[s])] for s in sids]]
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

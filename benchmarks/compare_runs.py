"""Compare two finished curate runs (OUT folders) sample by sample: did a code change move anything?

Reports the model verdicts that differ (action or label_final), the action counts, the largest
probability difference over the `predictions` rows both runs have, the `dataset_issues` row counts
and the train stage summaries that differ. Used to check that a refactor keeps behaviour
(benchmarks/results/issue15_demo_equivalence.md).

    python benchmarks/compare_runs.py OLD_OUT NEW_OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ferclean.store import Store


def _verdicts(store: Store):  # noqa: ANN202
    r = store.read("relabels").to_pandas()
    r = r[r.source == "model"].sort_values("decided_at").drop_duplicates("sample_id", keep="last")
    return r.set_index("sample_id")[["action", "label_final"]]


def compare(old: str, new: str) -> dict:
    so, sn = Store(old), Store(new)
    vo, vn = _verdicts(so), _verdicts(sn)
    j = vo.join(vn, how="outer", lsuffix="_old", rsuffix="_new").fillna("-")
    diff = j[(j.action_old != j.action_new) | (j.label_final_old != j.label_final_new)]
    key = ["sample_id", "method", "fold"]
    m = so.read("predictions").to_pandas().merge(sn.read("predictions").to_pandas(), on=key, suffixes=("_o", "_n"))
    dprob = max((float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(m.probs_o, m.probs_n)), default=None)
    summ = [json.loads((Path(o) / "stages" / "train.json").read_text())["summary"] for o in (old, new)]
    return {
        "verdicts": [len(vo), len(vn)], "verdicts_differing": diff.reset_index().to_dict("records"),
        "actions": [vo.action.value_counts().to_dict(), vn.action.value_counts().to_dict()],
        "prediction_rows": [so.count("predictions"), sn.count("predictions")], "matched_rows": len(m),
        "max_abs_prob_diff": dprob, "dataset_issues_rows": [so.count("dataset_issues"), sn.count("dataset_issues")],
        "train_summary_diff": {k: [summ[0].get(k), summ[1].get(k)] for k in set(summ[0]) | set(summ[1])
                               if summ[0].get(k) != summ[1].get(k) and k not in ("curves", "model_dir")},
    }


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(json.dumps(compare(sys.argv[1], sys.argv[2]), indent=1, default=str))

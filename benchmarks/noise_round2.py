"""A second round of cross-fitting on the first round's final labels (no FER+ information used).

Reads round-1 out-of-fold scores CACHE/<src>.npz (written by noise_real_full.py --method ...),
applies the bayes verdict rule to the FER2013 labels, retrains the same TrainConfig with 3-fold
cross-fitting on the resulting final labels, and saves the new scores to CACHE/<name>.npz
(with the round-1 final labels as `train_labels`). Then scores both rounds against the FER+
plurality. Results: benchmarks/results/noise_real_full.md, "Session 3".

    python benchmarks/noise_round2.py --store RUN --cache /tmp/ferclean_noise_full ulcag_guard r2_guard
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench_common import load_train_split as load

from ferclean.relabel import RelabelConfig, decide, final_labels  # noqa: E402
from ferclean.store import Store  # noqa: E402
from ferclean.train.config import TrainConfig  # noqa: E402
from ferclean.train.data import decode_crops  # noqa: E402
from ferclean.train.stage import au_graph_for, crossfit  # noqa: E402


def verdicts(labels: np.ndarray, z) -> tuple[dict, np.ndarray]:
    d = decide(labels, z["probs"].astype(np.float64), z["alpha"], z["sem_dist"],
               RelabelConfig(method="ulcag", rule="bayes"))
    return d, final_labels(labels, d.action, d.suggested)


def report(name: str, z, data: dict) -> None:
    labels, plural, ev = data["labels"], data["plural"], data["eval"]
    d, fin = verdicts(labels, z)
    flag, truth = np.isin(d.action, ["relabel", "review"]), labels != plural
    tp = (flag & truth)[ev].sum()
    p, r = tp / flag[ev].sum(), tp / truth[ev].sum()
    print(json.dumps({"scores": name, "argmax_acc": round(float((z["probs"].argmax(1)[ev] == plural[ev]).mean()), 4),
                      "precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(2 * p * r / (p + r)), 4),
                      "relabel": int((d.action == "relabel").sum()),
                      "final_acc": round(float((fin[ev] == plural[ev]).mean()), 4)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="curate output folder with aus and au_graph")
    ap.add_argument("--cache", default="/tmp/ferclean_noise_full")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("src", help="round-1 scores (file name without .npz)")
    ap.add_argument("name", help="round-2 scores to write")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    cache, store = Path(args.cache), Store(args.store)
    data = load(store)
    z1 = np.load(cache / f"{args.src}.npz", allow_pickle=True)
    out_path = cache / f"{args.name}.npz"
    if not out_path.exists():
        _, fin = verdicts(data["labels"], z1)
        images = decode_crops([Path(p) for p in data["paths"]], 48)
        a_bar, _ = au_graph_for(store, data["au_names"], data["aus"])
        cfg = TrainConfig(**json.loads(str(z1["config"])))
        t = time.time()
        out = crossfit(images, fin, "ulcag", cfg, data["aus"], a_bar,
                       log=lambda r: print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                                       for k, v in r.items()}), flush=True))
        np.savez(out_path, probs=out["probs"], alpha=out["alpha"], sem_dist=out["sem_dist"], seconds=time.time() - t,
                 config=str(z1["config"]), train_labels=fin)
    report("round 1", z1, data)
    report("round 2", np.load(out_path, allow_pickle=True), data)


if __name__ == "__main__":
    main()

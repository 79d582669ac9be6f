"""Cross-fit wall time: K folds one after another in one process vs in parallel fold processes.

Measures `ferclean.train.stage.crossfit` on the FER2013 valid split's crops (3,579 faces) with the
default TrainConfig (48 px, width 32, 8 epochs, 3 folds, ulcag with EMFACS prototype AUs), once
with fold_workers=1 (the behaviour when issue 17 was filed) and once per other worker count.
Run it on a quiet machine: wall time on shared cores measures the neighbours too. To time the code as it
was, put an older checkout first on PYTHONPATH (the commit is recorded):

    PYTHONPATH=/path/to/old/checkout python benchmarks/bench_crossfit_parallel.py --workers 1 --out old.json
    python benchmarks/bench_crossfit_parallel.py --workers 2 --out new.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ferclean.au_graph import cooccurrence_graph
from ferclean.classes import FER7
from ferclean.train.config import TrainConfig
from ferclean.train.data import OPENFACE_AUS, decode_crops, prototype_aus
from ferclean.train.stage import crossfit

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013"


def _cpu_s() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--split", default="valid")
    ap.add_argument("--limit", type=int, default=0, help="first N rows only (0 = all)")
    ap.add_argument("--method", default="ulcag")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    df = pd.read_csv(a.root / "labels.csv")
    df = df[df["split"] == a.split] if "split" in df.columns else df
    if a.limit:
        df = df.head(a.limit)
    cfg0 = TrainConfig(checkpoint=False, seed=a.seed, **({"epochs": a.epochs} if a.epochs else {}))
    x = decode_crops([a.root / p for p in df["image_path"]], cfg0.input_size)
    y = np.array([FER7.index(str(v).lower()) for v in df["label"]])
    labels = [str(v).lower() for v in df["label"]]
    aus = prototype_aus(labels, list(OPENFACE_AUS))  # what the train stage uses without an aus table
    a_bar = cooccurrence_graph(aus)
    import subprocess

    import ferclean
    src = Path(ferclean.__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res = {"ferclean": str(src), "commit": commit, "seed": a.seed, "n": len(y), "method": a.method, "config": cfg0.model_dump(include={"input_size", "width", "epochs", "folds", "batch_size"}),
           "cpu_count": os.cpu_count(), "load_before": os.getloadavg(), "runs": []}
    for w in a.workers:
        cfg = cfg0.model_copy(update={"fold_workers": w})
        t, c = time.perf_counter(), _cpu_s()
        r = crossfit(x, y, a.method, cfg, aus, a_bar)
        wall, cpu = time.perf_counter() - t, _cpu_s() - c
        acc = float((r["probs"].argmax(1) == y).mean())
        row = {"fold_workers": w, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "oof_acc_vs_given": round(acc, 4),
               "load_after": os.getloadavg()}
        res["runs"].append(row)
        print(json.dumps(row), flush=True)
    base = res["runs"][0]["wall_s"]
    for row in res["runs"]:
        row["wall_vs_first"] = round(row["wall_s"] / base, 3)
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""What Dask's MALLOC_TRIM_THRESHOLD_ costs the score stage's forward passes and a training fold, and what
`ferclean.memory.undo_low_trim_threshold` gives back.

    PYTHONPATH=$PWD python benchmarks/bench_malloc_trim.py [--model DIR] [--n 4096] [--repeats 2]

Each arm runs in a fresh child process (the environment variable only acts at process start, as in a Dask
worker started by its nanny): score `n` random 48 px crops with the model in DIR in ferclean's CPU inference
settings, then train a tiny 1-epoch ce fold on 2,048 random images. Reports user and system CPU seconds of each
part (resource.getrusage of the child). Arms: plain process; MALLOC_TRIM_THRESHOLD_=65536 (Dask's nanny); the
same with undo_low_trim_threshold() called first. Results go to benchmarks/results/malloc_trim.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import numpy as np
undo = sys.argv[3] == "1"
if undo:
    from ferclean.memory import undo_low_trim_threshold
    undo_low_trim_threshold()
import torch
torch.set_num_threads(1)
from ferclean.inference import INFER_BATCH, inference_settings
from ferclean.train.model_io import load_model, score

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime

out = {}
model = load_model(sys.argv[1])
size = int(model.meta["input_size"])
rng = np.random.default_rng(0)
crops = rng.integers(0, 255, (int(sys.argv[2]), size, size), dtype=np.uint8)
score(model, crops[:INFER_BATCH])  # warm
u0, s0 = cpu()
with inference_settings(model):
    score(model, crops, batch_size=INFER_BATCH)
u1, s1 = cpu()
out["score"] = {"user_s": round(u1 - u0, 2), "sys_s": round(s1 - s0, 2), "images": len(crops)}
from ferclean.train.config import TrainConfig
from ferclean.train.engine import fit_and_score_fold
x = rng.integers(0, 255, (2048, 48, 48), dtype=np.uint8)
y = rng.integers(0, 7, 2048)
cfg = TrainConfig(epochs=1, methods=["ce"], final_method="ce", checkpoint=False, num_threads=1)
u0, s0 = cpu()
fit_and_score_fold(x, y, x[:512], "ce", cfg, None, None, None)
u1, s1 = cpu()
out["fold"] = {"user_s": round(u1 - u0, 2), "sys_s": round(s1 - s0, 2), "images": len(x)}
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="/tmp/ferclean_million/model_run/model")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    arms = {"plain": ({}, "0"), "dask_trim_env": ({"MALLOC_TRIM_THRESHOLD_": "65536"}, "0"),
            "dask_trim_env_undone": ({"MALLOC_TRIM_THRESHOLD_": "65536"}, "1")}
    rows = []
    for rep in range(args.repeats):
        for arm, (extra, undo) in arms.items():
            env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
            env.update(extra, PYTHONPATH=str(ROOT))
            res = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.n), undo], env=env,
                                 capture_output=True, text=True, check=True)
            row = {"arm": arm, "repeat": rep, **json.loads(res.stdout.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    dest = ROOT / "benchmarks" / "results" / "malloc_trim.json"
    dest.write_text(json.dumps({"model": args.model, "n": args.n, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

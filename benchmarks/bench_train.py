"""Training throughput (samples/s) of ulcag vs ce (and scn) with the same backbone on this CPU.

Interleaves the methods (A B A B ...) so load from other processes on the shared 2-core host hits
them alike; reports the median over repeats of whole-epoch throughput.

Usage: python benchmarks/bench_train.py --n 1024 --size 32 --width 16 --repeats 3
Writes benchmarks/results/train_throughput[-TAG].json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from ferclean.train.config import TrainConfig
from ferclean.train.data import cooccurrence_graph, prototype_aus
from ferclean.train.engine import fit, predict

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="ce,scn,ulcag")
    ap.add_argument("--tag", default="cpu")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.n, args.size, args.size)).astype(np.uint8)
    labels = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "angry"]
    y = rng.integers(0, 7, args.n)
    aus = prototype_aus([labels[k] for k in y])
    a = cooccurrence_graph(aus)
    # aux_warmup=0 so the ulcag epochs measured all run the AU-graph branch
    cfg = TrainConfig(input_size=args.size, width=args.width, epochs=args.epochs, checkpoint=False, backbone="cnn",
                      aux_warmup=0.0)
    train: dict[str, list[float]] = {m: [] for m in args.methods.split(",")}
    infer: dict[str, list[float]] = {m: [] for m in train}
    for _ in range(args.repeats):
        for m in train:
            res = fit(x, y, m, cfg, aus, a)
            train[m].extend(h["samples_per_s"] for h in res.history)
            t = time.perf_counter()
            predict(res.model, x, m, res.templates, res.logit_scale, tta_flip=False)
            infer[m].append(args.n / (time.perf_counter() - t))
    out = {"protocol": {**vars(args), "threads": cfg.num_threads, "cpus": os.cpu_count(),
                        "machine": f"{os.cpu_count()}-core CPU, load average {os.getloadavg()[0]:.1f} at start", "data": "random 8-bit images"},
           "train_samples_per_s_median": {m: round(statistics.median(v), 1) for m, v in train.items()},
           "train_samples_per_s_all": {m: [round(s, 1) for s in v] for m, v in train.items()},
           "inference_samples_per_s_median": {m: round(statistics.median(v), 1) for m, v in infer.items()}}
    med = out["train_samples_per_s_median"]
    if "ce" in med and "ulcag" in med:
        out["ulcag_over_ce"] = round(med["ulcag"] / med["ce"], 3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"train_throughput-{args.tag}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

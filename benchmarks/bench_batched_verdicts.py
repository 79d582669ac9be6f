"""Memory and CPU of the verdict rule on N synthetic scored samples: whole collection (`verdicts`, every
row's arrays at once) against batched (`collection_rule_stats` over parts made on the fly, then
`part_verdicts` part by part, as score_collection does from its compact files).

Each (mode, N) runs in a fresh process; memory is tracemalloc's peak of the rule itself (numpy reports its
buffers to tracemalloc) plus the process's peak RSS. The batched mode never holds more than one part of
inputs; the whole mode holds the collection's arrays (counted in its peak, as in score_collection before).

    PYTHONPATH=$PWD nice -n 5 python benchmarks/bench_batched_verdicts.py --n 10000 100000 1000000 \
        --out benchmarks/results/batched_verdicts.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np

C = 7
PART = 8192


def _part(i: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows i*PART.. of a synthetic collection (labels 75 % right, 8 % unlabelled; AU view; 10 % without AUs)."""
    rng = np.random.default_rng(i)
    m = min(PART, n - i * PART)
    true = rng.integers(0, C, m)
    labels = np.where(rng.random(m) < 0.75, true, rng.integers(0, C, m))
    labels[rng.random(m) < 0.08] = -1
    z = rng.normal(0, 1, (m, C))
    z[np.arange(m), true] += 1.5
    probs = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(np.float32).astype(np.float64)
    au = rng.dirichlet(np.ones(C), m)
    au[rng.random(m) < 0.1] = np.nan
    return labels, probs, au


def run(mode: str, n: int) -> dict:
    from ferclean.au_view import combine
    from ferclean.noise import RelabelConfig, add_trust_sums
    from ferclean.relabel import collection_rule_stats, part_verdicts, verdicts

    classes = [f"c{k}" for k in range(C)]
    cfg = RelabelConfig()
    ref = np.eye(C) * 0.8 + 0.2 / C
    parts = range((n + PART - 1) // PART)
    cpu0 = time.process_time()
    tracemalloc.start()
    actions: dict[str, int] = {}
    if mode == "whole":
        cols = [_part(i, n) for i in parts]
        labels, probs, au = (np.concatenate([c[k] for c in cols]) for k in range(3))
        del cols
        ids = [f"s{i:08d}" for i in range(n)]
        v = verdicts(ids, [None] * n, classes, probs, None, None, np.ones(n, bool), [[]] * n, cfg, au_probs=au,
                     labels=labels, reference_noise=ref, model_accuracy=0.7)
        a, k = np.unique(v.action.astype(str), return_counts=True)
        actions = dict(zip(a.tolist(), k.tolist(), strict=True))
    else:
        stats, _ = collection_rule_stats(lambda: (_part(i, n) for i in parts), cfg, 0.7, ref)
        sums, off = None, 0
        for i in parts:
            labels, probs, au = _part(i, n)
            m = len(labels)
            v = part_verdicts([f"s{off + j:08d}" for j in range(m)], classes, labels, combine(probs, au, cfg.au_view_weight),
                              au, None, None, np.ones(m, bool), [[]] * m, cfg, stats, off)
            sums = add_trust_sums(sums, v.trust_sums)
            for a, k in zip(*np.unique(v.action.astype(str), return_counts=True), strict=True):
                actions[str(a)] = actions.get(str(a), 0) + int(k)
            off += m
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"mode": mode, "n": n, "peak_traced_mb": round(peak / 2**20, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cpu_s": round(time.process_time() - cpu0, 1), "actions": dict(sorted(actions.items()))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--modes", nargs="+", default=["batched", "whole"])
    ap.add_argument("--out")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run(a.one[0], int(a.one[1]))))
        return
    rows = []
    for n in a.n:
        for mode in a.modes:
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--one", mode, str(n)], capture_output=True, text=True,
                                 check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["wall_s"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "part_rows": PART, "classes": C, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

"""Near-duplicate search at scale: banded multi-index hashing vs brute force.

Synthetic 64-bit pHash sets of N hashes, 5 % of them planted near copies (0..6 flipped bits) of
another hash:
- uniform: random hashes (the best case for banding);
- fer-like: real FER2013 pHashes (../shared/data/fer2013, hashed here) each perturbed by 8..16
  random bit flips, which keeps the strong bit bias of face pHashes (bigger band buckets).
Each case runs in a fresh subprocess; reports wall time, candidate pairs checked, pairs found,
tracemalloc peak of the search and the process peak RSS (after the search, then after the
brute-force check, whose chunked XOR matrix dominates it). Recall against brute force is checked
on a fresh 20 k set made the same way (brute force at 200 k is itself minutes on 2 cores).

    python benchmarks/bench_dataset_issues.py [--n 200000 1000000]
writes benchmarks/results/dataset_issues_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FER = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013"

CHILD = r"""
import json, resource, sys, time, tracemalloc
import numpy as np
from ferclean.dataset_issues.neighbors import near_pairs_banded, near_pairs_brute
n, kind, k, fer_npy = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
def make(n, seed):
    rng = np.random.default_rng(seed)
    n_base = int(n * 0.95)
    if kind == "uniform":
        base = rng.integers(0, 2**64, n_base, dtype=np.uint64)
    else:
        real = np.load(fer_npy)
        base = real[rng.integers(0, len(real), n_base)]
        for _ in range(16):  # 8..16 random flips each (a flip may repeat)
            flip = rng.integers(0, 64, n_base).astype(np.uint64)
            on = rng.random(n_base) < 0.75
            base = np.where(on, base ^ (np.uint64(1) << flip), base)
    src = base[rng.integers(0, n_base, n - n_base)]
    for _ in range(6):
        flip = rng.integers(0, 64, len(src)).astype(np.uint64)
        on = rng.random(len(src)) < 0.5
        src = np.where(on, src ^ (np.uint64(1) << flip), src)
    return np.unique(np.concatenate([base, src]))  # the stage searches distinct hashes
h = make(n, 0)
tracemalloc.start()
t = time.perf_counter()
pairs, dist, stats = near_pairs_banded(h, k)
dt = time.perf_counter() - t
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
rss_search = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
small = make(20000, 1)  # recall check: same recipe, 20 k hashes, brute force as reference
p_b, _, _ = near_pairs_banded(small, k)
p_r, _ = near_pairs_brute(small, k)
print(json.dumps({
    "n_distinct": int(len(h)), "kind": kind, "max_hamming": k, "search_s": round(dt, 2),
    "candidates": stats["candidates"], "pairs": int(len(pairs)),
    "search_peak_tracemalloc_mib": round(peak / 2**20, 1),
    "hashes_mib": round(h.nbytes / 2**20, 1),
    "all_pairs_matrix_mib_if_brute": round(len(h) ** 2 / 2**20, 0),
    "recall_vs_brute_on_20k_set": (len({tuple(p) for p in p_b.tolist()} & {tuple(p) for p in p_r.tolist()}) / len(p_r)) if len(p_r) else None,
    "brute_pairs_on_20k_set": int(len(p_r)),
    "peak_rss_after_search_mib": round(rss_search, 1),
    "peak_rss_after_brute_check_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
}))
"""


def fer_hashes(path: Path) -> Path | None:
    """Hash the FER2013 PNGs once (cached as .npy); None when the data is absent."""
    if path.exists():
        return path
    if not (FER / "labels.csv").exists():
        return None
    import csv

    import numpy as np

    from ferclean.dataset_issues.phash import hash_images

    with open(FER / "labels.csv") as f:
        files = sorted({str(FER / r["image_path"]) for r in csv.DictReader(f)})
    h, *_ = hash_images(files)
    np.save(path, h)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[200_000])
    ap.add_argument("--k", type=int, nargs="+", default=[4])
    ap.add_argument("--cache", default="/tmp/fer_phash.npy")
    args = ap.parse_args()
    fer = fer_hashes(Path(args.cache))
    runs = []
    for n in args.n:
        for kind in ("uniform", "fer-like"):
            if kind == "fer-like" and fer is None:
                continue
            for k in args.k:
                res = subprocess.run([sys.executable, "-c", CHILD, str(n), kind, str(k), str(fer)],
                                     capture_output=True, text=True, check=True)
                row = {"n": n, **json.loads(res.stdout.strip().splitlines()[-1])}
                print(json.dumps(row), flush=True)
                runs.append(row)
    RESULTS.mkdir(exist_ok=True)
    out = {"machine": f"{platform.machine()} {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}",
           "runs": runs}
    (RESULTS / "dataset_issues_bench.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

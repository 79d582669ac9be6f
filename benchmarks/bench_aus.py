"""Throughput of the aus stage (geometric backend) and of the pure maths, on this machine.

Builds a temporary store with N samples/faces whose landmarks are jittered copies of real
FER2013 dlib landmarks when the validation cache exists (else a synthetic template), then times
`run_aus` end to end (read faces -> fit reference -> shards -> write `aus`) with 1 and 2 worker
processes, and `geometric_aus` alone. Writes benchmarks/results/aus_bench.json.

    python benchmarks/bench_aus.py [--faces 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("FERCLEAN_NO_PROGRESS", "1")

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path("/tmp/ferclean_aus_cache/fer_landmarks68.npz")


def landmark_pool(n: int) -> np.ndarray:
    """(n, 136) px landmarks: cached FER dlib landmarks (x3 for px) or a jittered template."""
    rng = np.random.default_rng(0)
    if CACHE.exists():
        base = np.load(CACHE)["lm"].reshape(-1, 136) * 3
    else:
        from tests.test_aus_geometric import template

        base = (template() * 40 + 70).reshape(1, 136)
    pick = base[rng.integers(0, len(base), n)]
    return (pick + rng.normal(0, 0.3, pick.shape)).astype(np.float32)


def build_store(root: Path, n: int):
    from ferclean.store import Store
    from tests.test_aus_stage import contract_rows

    store = Store(root)
    lm = landmark_pool(n)
    labels = np.array(["neutral", "happy", "sad", "surprise"])[np.arange(n) % 4]
    samples = [{"sample_id": f"s{i:07d}", "source_path": f"/x/{i}.png", "content_sha256": f"{i:064x}",
                "split": "train" if i % 5 else "valid", "label_original": labels[i], "collection": "bench",
                "run_id": "b"} for i in range(n)]
    faces = [{"sample_id": f"s{i:07d}", "face_index": 0, "is_primary": True, "landmarks68": lm[i].tolist(),
              "landmarks68_crop": lm[i].tolist(), "run_id": "b"} for i in range(n)]
    store.write_part("samples", "all", contract_rows("samples", samples))
    step = 50_000
    for k in range(0, n, step):
        store.write_part("faces", f"p{k:08d}", contract_rows("faces", faces[k:k + step]))
    return store, lm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faces", type=int, default=20000)
    ap.add_argument("--shard-size", type=int, default=4096)
    args = ap.parse_args()
    from ferclean.aus import AusConfig, run_aus
    from ferclean.aus.geometric import fit_reference, geometric_aus, measure, normalise_landmarks
    from ferclean.runs import open_run

    out: dict = {"faces": args.faces, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        store, lm = build_store(Path(tmp) / "out", args.faces)
        ref = fit_reference(measure(normalise_landmarks(lm)[0]))
        t0 = time.perf_counter()
        geometric_aus(lm, ref)
        dt = time.perf_counter() - t0
        out["maths_faces_per_s"] = round(args.faces / dt)
        for workers in (1, 2):
            for name in ("aus",):
                for key in store.part_keys(name):
                    store.part_path(name, key).unlink()
            cfg = AusConfig(workers=workers, shard_size=args.shard_size)
            t0 = time.perf_counter()
            with open_run(store, "aus", cfg.model_dump()) as run:
                summary = run_aus(store, run, cfg, progress=False)
            dt = time.perf_counter() - t0
            out[f"stage_workers{workers}_s"] = round(dt, 2)
            out[f"stage_workers{workers}_faces_per_s"] = round(summary["faces"] / dt)
            out[f"stage_workers{workers}_shards"] = summary["shards"]
        t0 = time.perf_counter()
        with open_run(store, "aus", cfg.model_dump()) as run:
            summary = run_aus(store, run, cfg, progress=False)
        out["resume_all_skipped_s"] = round(time.perf_counter() - t0, 2)
    out["loadavg_end"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "aus_bench.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

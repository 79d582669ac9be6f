"""Nightly increments: how much of a grown collection does the rerun recompute?

A nightly collection of N FER2013 images (a manifest of absolute paths, ingested with --root, as
`find /data -name '*.png'` would list them) is curated with `ferclean curate` (the CLI, a
subprocess); then 1 % new images whose ids fall between the old ones are added and `curate`
runs again. Reported: the share of images the faces and aus stages recompute on the rerun (faces
and aus rows stamped with the rerun's run_id), each stage's seconds, and the rerun's wall time
against the first run's. Training, verdicts and export rerun in full by design.

    python benchmarks/bench_increments.py --n 10000 --new 0.01

Writes benchmarks/results/increments.json. Needs ../shared/data/fer2013.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
FER = ROOT.parent / "shared" / "data" / "fer2013"
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = """\
train: {epochs: 2, width: 8, folds: 3, num_threads: 1}
"""


def write_manifest(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_path", "label", "split"])
        for r in sorted(rows, key=lambda r: r["image_path"]):
            w.writerow([str((FER / r["image_path"]).resolve()), r["label"], r["split"]])


def curate(manifest: Path, out: Path, cfg: Path) -> tuple[float, dict]:
    env = {**os.environ, "FERCLEAN_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "ferclean.cli", "curate", str(manifest), "--out", str(out),
                          "--root", str(FER.resolve()), "--config", str(cfg), "--json"],
                         env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if res.returncode:
        sys.exit(f"curate failed ({res.returncode}): {res.stderr[-2000:]}")
    return wall, json.loads(res.stdout)


def computed_share(out: Path, run_id: str, table: str) -> tuple[int, int]:
    from ferclean.store import Store

    t = Store(out).read(table, ["sample_id", "run_id"])
    mine = t.filter(pc.equal(t.column("run_id"), run_id))
    return len(set(mine.column("sample_id").to_pylist())), len(set(t.column("sample_id").to_pylist()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--new", type=float, default=0.01, help="share of new images in the second night")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ferclean_bench_increments"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (FER / "labels.csv").is_file():
        sys.exit(f"needs {FER}/labels.csv")
    rows = [r for r in csv.DictReader((FER / "labels.csv").open()) if r["label"]]
    uniq = {r["image_path"]: r for r in rows}
    rows = list(uniq.values())
    random.Random(args.seed).shuffle(rows)
    n_new = round(args.n * args.new)
    night1, new = rows[: args.n], rows[args.n : args.n + n_new]
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    cfg = args.work / "stages.yaml"
    cfg.write_text(CONFIG)
    manifest = args.work / "manifests" / "nightly.csv"
    manifest.parent.mkdir()
    out = args.work / "out"

    write_manifest(manifest, night1)
    wall1, s1 = curate(manifest, out, cfg)
    write_manifest(manifest, night1 + new)
    wall2, s2 = curate(manifest, out, cfg)
    faces_new, faces_all = computed_share(out, s2["run_id"], "faces")
    aus_new, aus_all = computed_share(out, s2["run_id"], "aus")
    result = {
        "n_first": len(night1), "n_added": len(new), "config": CONFIG,
        "first": {"wall_s": round(wall1, 1), "stages": s1["stages"], "samples": s1["samples"]},
        "rerun": {"wall_s": round(wall2, 1), "stages": s2["stages"], "samples": s2["samples"]},
        "faces_recomputed": faces_new, "faces_images": faces_all,
        "faces_recomputed_share": round(faces_new / max(faces_all, 1), 4),
        "aus_recomputed": aus_new, "aus_faces": aus_all,
        "aus_recomputed_share": round(aus_new / max(aus_all, 1), 4),
        "rerun_over_first_wall": round(wall2 / wall1, 3),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "increments.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("first", "rerun", "config")}, indent=1))
    print("first:", result["first"]["stages"])
    print("rerun:", result["rerun"]["stages"])


if __name__ == "__main__":
    main()

"""RSS timeline of one `relabel-collection` run, per stage: where the flow process's memory sits, not only its peak.

    python benchmarks/bench_rss_timeline.py --code /path/to/checkout --out OUT [--collection MANIFEST]
        [--model DIR] [--config relabel.json] [--workers 2] [--label NAME]

Runs the CLI of the checkout at --code as a subprocess on a fresh OUT, samples every 0.5 s the RSS of the
flow process and of its children (Prefect's temporary API server), and the number of finished stages (OUT/stages/
*.json), then reports per stage the flow process's minimum, 10th percentile, median and maximum RSS. Two
checkouts run one after the other (or side by side on an idle machine) give an A/B of a memory change whose
effect a single peak hides: the peak depends on when two shards happen to be in flight together. Results are
appended to benchmarks/results/rss_timeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "faces", "aus", "score")


def sample(cmd: list[str], env: dict[str, str], out: Path, cwd: str) -> tuple[int, list[tuple[float, float, float, int]]]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=cwd)
    ps, rows = psutil.Process(proc.pid), []
    t0 = time.time()
    while proc.poll() is None:
        try:
            main = ps.memory_info().rss / 2**20
            kids = sum(c.memory_info().rss for c in ps.children(recursive=True)) / 2**20
            done = len(list((out / "stages").glob("*.json"))) if (out / "stages").is_dir() else 0
            rows.append((time.time() - t0, main, kids, done))
        except psutil.Error:
            pass
        time.sleep(0.5)
    return proc.returncode, rows


def summarise(rows: list[tuple[float, float, float, int]]) -> dict:
    a = np.array(rows, dtype=np.float64)
    res = {"wall_s": round(float(a[-1, 0]), 1), "peak_total_mb": round(float((a[:, 1] + a[:, 2]).max()), 1),
           "peak_flow_mb": round(float(a[:, 1].max()), 1), "stages": {}}
    for k, name in enumerate(STAGES):
        m = a[:, 3] == k  # k stage manifests written: stage k is running
        if m.sum() < 4:
            continue
        x = a[m, 1]
        res["stages"][name] = {"samples": int(m.sum()), **{q: round(float(v), 1) for q, v in (
            ("min_mb", x.min()), ("p10_mb", np.percentile(x, 10)), ("median_mb", np.median(x)), ("max_mb", x.max()))},
            "children_max_mb": round(float(a[m, 2].max()), 1)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", default=str(ROOT), help="checkout whose CLI runs (PYTHONPATH)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--collection", default="/tmp/ferclean_million/collection_100000/manifest.csv")
    ap.add_argument("--model", default="/tmp/ferclean_million/model_run/model")
    ap.add_argument("--config", default="/tmp/ferclean_million/relabel.json")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists: the timeline needs a fresh OUT")
    env = {**os.environ, "PYTHONPATH": args.code, "FERCLEAN_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "ferclean.cli", "relabel-collection", args.collection, "--model", args.model,
           "--out", str(args.out), "--workers", str(args.workers), "--config", args.config, "--no-progress"]
    rc, rows = sample(cmd, env, args.out, args.code)
    res = {"label": args.label, "code": args.code, "collection": args.collection, "rc": rc,
           "date": time.strftime("%Y-%m-%dT%H:%M:%S"), **summarise(rows)}
    print(json.dumps(res, indent=1))
    dest = ROOT / "benchmarks" / "results" / "rss_timeline.json"
    old = json.loads(dest.read_text()) if dest.exists() else []
    dest.write_text(json.dumps([*old, res], indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Ingest throughput (rows/s) and peak memory on ../shared/data/fer2013.

Each measurement runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own. Runs the
manifest (labels.csv, 32,139 rows) at three sizes to show memory does not grow with the
collection, and the image folder as an unlabelled folder source.

    python benchmarks/bench_ingest.py  # writes benchmarks/results/ingest.json and ingest.md
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

FER = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013"
RESULTS = Path(__file__).resolve().parent / "results"

CHILD = r"""
import json, resource, sys, time
from ferclean.store import Store
from ferclean.runs import open_run
from ferclean.ingest import IngestConfig, run_ingest
src, out, limit, unl = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
cfg = IngestConfig(source=src, limit=int(limit) if limit != "0" else None, unlabelled=unl or None)
store = Store(out)
t = time.perf_counter()
with open_run(store, "ingest", {}) as run:
    s = run_ingest(store, run, cfg, progress=False)
dt = time.perf_counter() - t
print(json.dumps({"rows": s["input_rows"], "samples": s["samples"], "rejects": s["rejects"],
                  "seconds": round(dt, 2), "rows_per_s": round(s["input_rows"] / dt, 1),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def measure(src: Path, limit: int, unlabelled: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as out:
        res = subprocess.run([sys.executable, "-c", CHILD, str(src), out, str(limit), "1" if unlabelled else "0"],
                             capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    if not FER.exists():
        sys.exit(f"needs {FER}")
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "runs": []}
    for limit in (4000, 16000, 0):
        r = measure(FER / "labels.csv", limit)
        r["source"] = f"labels.csv (manifest), limit={limit or 'all'}"
        results["runs"].append(r)
        print(r)
    r = measure(FER / "images", 0, unlabelled=True)
    r["source"] = "images/ (folder, unlabelled)"
    results["runs"].append(r)
    print(r)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(results, indent=1))
    lines = ["# Ingest throughput", "", f"Machine: {results['machine']}", "",
             "| source | rows | samples | rejects | s | rows/s | peak RSS MiB |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['source']} | {r['rows']} | {r['samples']} | {r['rejects']} | {r['seconds']} | "
              f"{r['rows_per_s']} | {r['peak_rss_mib']} |" for r in results["runs"]]
    (RESULTS / "ingest.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

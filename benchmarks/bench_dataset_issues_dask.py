"""The dataset-issue search with its per-image work (crop pHashes, crop embeddings) in this process vs on a Dask
LocalCluster (issue 16; ferclean.dataset_issues.face_parts on the executor of ferclean.stage_executor).

Runs `run_dataset_issues` on a kept OUT (with the model given) twice, each in a fresh subprocess: in process, then
with the search inside `dask_executor(None, workers)`. Reports per run the wall seconds of the search, the CPU
seconds (user + sys) of the stage process and of the cluster's processes (nannies and workers, read with psutil
before the cluster closes), the cluster's start-up seconds, the phases the stage clocked, and a digest of the
`dataset_issues` rows (run ids aside): the two must be equal. Writes into OUT (give it a copy).

    PYTHONPATH=$PWD nice -n 5 python benchmarks/bench_dataset_issues_dask.py --out /tmp/x16d2/out_10000 \
        --model /tmp/x16d2/model --workers 2 --repeat 3
writes benchmarks/results/dataset_issues_dask.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

CHILD = r"""
import hashlib, json, resource, sys, time
from contextlib import nullcontext
import psutil
from ferclean.dataset_issues import DatasetIssuesConfig, run_dataset_issues
from ferclean.runs import open_run
from ferclean.stage_executor import dask_executor
from ferclean.store import Store

out, model, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
me = psutil.Process()

def cluster_cpu():
    t = 0.0
    for p in me.children(recursive=True):
        try:
            c = p.cpu_times()
            t += c.user + c.system + c.children_user + c.children_system
        except psutil.Error:
            pass
    return t

store = Store(out)
t0 = time.perf_counter()
ctx = dask_executor(None, workers) if workers else nullcontext()
with ctx:
    started = time.perf_counter() - t0
    cpu0, ccpu0 = time.process_time(), cluster_cpu()
    w = time.perf_counter()
    with open_run(store, "dataset_issues", {}) as run:
        s = run_dataset_issues(store, run, DatasetIssuesConfig(model_dir=model), progress=False)
    wall = time.perf_counter() - w
    cpu = time.process_time() - cpu0
    ccpu = cluster_cpu() - ccpu0
rows = [{k: v for k, v in r.items() if k != "run_id"} for r in store.read("dataset_issues").to_pylist()]
digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
keep = ("samples", "hashed", "hashed_from_crop", "faces_used", "model_used", "clusters", "samples_in_clusters",
        "outliers", "unreadable", "per_image_work_in", "face_parts", "face_signals_worker_cpu_s",
        "face_signals_worker_wall_s")
print("RESULT " + json.dumps({
    "search_wall_s": round(wall, 1), "stage_process_cpu_s": round(cpu, 1), "cluster_processes_cpu_s": round(ccpu, 1),
    "cpu_s": round(cpu + ccpu, 1), "cluster_start_s": round(started, 1) if workers else 0.0,
    "peak_rss_mb_stage_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "rows": len(rows), "rows_sha256": digest,
    "issues": {k: v for k, v in s.items() if k.startswith("issues.")},
    "summary": {k: s[k] for k in keep if k in s},
    "phases_stage_process": s["phases"],
}))
"""


def run(out: str, model: str, workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    load = round(os.getloadavg()[0], 1)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, out, model, str(workers)], capture_output=True, text=True,
                       env=env, check=False)
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
    return {**json.loads(line[len("RESULT "):]), "subprocess_wall_s": round(time.perf_counter() - t, 1),
            "load_avg_1m_before": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="a kept OUT with faces (a copy: the search writes into it)")
    ap.add_argument("--model", required=True, help="the trained model folder")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--result", default=str(RESULTS / "dataset_issues_dask.json"))
    ap.add_argument("--repeat", type=int, default=1, help="pairs of runs (in process, then dask), alternating")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"in_process": [], "dask_local_cluster": []}
    for _ in range(args.repeat):
        for name, workers in (("in_process", 0), ("dask_local_cluster", args.workers)):
            r = run(args.out, args.model, workers)
            runs[name].append(r)
            print(name, json.dumps({k: v for k, v in r.items() if k != "phases_stage_process"}), flush=True)
    keys = ("search_wall_s", "stage_process_cpu_s", "cluster_processes_cpu_s", "cpu_s", "cluster_start_s",
            "peak_rss_mb_stage_process")
    result = {
        "out": args.out, "model": args.model, "workers": args.workers, "repeat": args.repeat,
        "machine": platform.node(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "2 shared cores, busy with other jobs: wall times are inflated and noisy; CPU = stage process + "
                "cluster processes",
        "median": {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()},
        **{name: rs for name, rs in runs.items()},
        "identical_rows": len({r["rows_sha256"] for rs in runs.values() for r in rs}) == 1,
    }
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=1))
    print("identical rows:", result["identical_rows"], "->", args.result)


if __name__ == "__main__":
    main()

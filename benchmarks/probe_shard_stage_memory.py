"""faces + aus stages through the Prefect shard mapping (flows.stages.run_stage, 2 threads) on a store whose
parts all exist: measures the flow process's planning / mapping / finishing memory, not the per-shard compute.

    PYTHONPATH=$PWD python benchmarks/probe_shard_stage_memory.py OUT

OUT (issue 16): a folder with tables/{samples,faces,aus}/ holding symlinks to the part files of a kept 1M
bench_million OUT (faces parts renamed to this code's shard keys) and copies of its stages/*.shards.parquet,
so nothing is computed; the aus reference is the bench model's. Prints the process tree's peak RSS per stage."""
import json
import sys
import threading
import time

import psutil

from ferclean import pipeline
from ferclean.runs import open_run
from ferclean.stage_cache import clear_manifest
from ferclean.store import Store
from flows.stages import run_stage

out = sys.argv[1]
store = Store(out)
peak = {"now": 0, "stage": None, "by": {}}
me = psutil.Process()
def sample():
    while True:
        tot = 0
        for p in [me, *me.children(recursive=True)]:
            try: tot += p.memory_info().rss
            except psutil.Error: pass
        st = peak["stage"]
        if st: peak["by"][st] = max(peak["by"].get(st, 0), tot)
        time.sleep(0.2)
threading.Thread(target=sample, daemon=True).start()
stages = pipeline.STAGE_SETS["relabel_collection"]
raw = {"faces": {"landmarks": "fastlm", "shard_size": 4096, "contact_sheet_n": 0}}
ref = "/tmp/ferclean_million/model_run/model/aus_reference.json"
plan = [pipeline.get_spec("faces", stages), pipeline.get_spec("aus", stages)]
cfgs = pipeline.build_configs(plan, raw, {"faces": {"workers": 2}, "aus": {"workers": 2, "reference_path": ref}},
                              all_stages=stages)
runner = {"kind": "default", "workers": 2, "retries": 0, "retry_delay_s": 0}
res = {}
from prefect import flow


@flow
def warm():
    return 1
peak["stage"] = "base"
warm()
time.sleep(1)
print("base", round(peak["by"]["base"] / 2**20), flush=True)
with open_run(store, "probe", {}) as run:
    for spec in plan:
        clear_manifest(store, spec.name)
        peak["stage"] = spec.name
        t0 = time.perf_counter(); c0 = time.process_time()
        r = run_stage(store, run, spec, cfgs[spec.name], shard_runner=runner, stages="relabel_collection")
        time.sleep(0.5)
        res[spec.name] = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
                          "peak_tree_mb": round(peak["by"][spec.name] / 2**20), "shards": r.get("shards"),
                          "rows_written": r["summary"].get("rows_written", r["summary"].get("rows"))}
        print(spec.name, json.dumps(res[spec.name]), flush=True)
print("RESULT", json.dumps(res))

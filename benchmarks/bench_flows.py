"""Wall time of `ferclean curate` (the Prefect flow) on FER2013, and of an immediate rerun.

Runs the CLI in a subprocess (so the time includes Prefect's embedded API start-up) and reads the
per-stage seconds and cached flags from the stage manifests and the `runs` table.

    python benchmarks/bench_flows.py smoke   # --limit 500, every stage, a small training config
    python benchmarks/bench_flows.py full    # all 32k rows, --until au_graph (training takes hours on CPU)

Writes benchmarks/results/flows_<name>.json. Needs ../shared/data/fer2013.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT.parent / "shared" / "data" / "fer2013" / "labels.csv"
RESULTS = ROOT / "benchmarks" / "results"

SMOKE_CONFIG = """\
faces: {shard_size: 128}
train: {epochs: 2, folds: 3, width: 16, methods: [ulcag], final_method: ulcag, num_threads: 2}
"""

CASES = {
    "smoke": {"args": ["--limit", "500", "--workers", "2"], "config": SMOKE_CONFIG},
    "full": {"args": ["--until", "au_graph", "--workers", "2"], "config": None},
}


def curate(out: Path, args: list[str], config: Path | None) -> dict:
    cmd = [sys.executable, "-m", "ferclean.cli", "curate", str(LABELS), "--out", str(out), "--no-progress", *args]
    if config is not None:
        cmd += ["--config", str(config)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "FERCLEAN_NO_PROGRESS": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"curate failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    from ferclean.store import Store

    runs = sorted(Store(out).read("runs").to_pylist(), key=lambda r: r["started_at"])
    counts = json.loads(runs[-1]["counts"])
    stages = {}
    for f in sorted((out / "stages").glob("*.json")):
        m = json.loads(f.read_text())
        stages[m["stage"]] = {
            "cached": counts.get(f"stages.{m['stage']}.cached", 0) == 1,
            "computed_by_this_run": m["run_id"] == runs[-1]["run_id"],
        }
    return {"cmd": " ".join(cmd[2:]), "wall_s": round(wall, 1), "run_id": runs[-1]["run_id"],
            "status": runs[-1]["status"], "stages": stages,
            "rows": {k: v for k, v in counts.items() if not k.startswith("stages.")}}


def stage_seconds(out: Path) -> dict[str, float]:
    from datetime import datetime

    secs = {}
    for f in sorted((out / "stages").glob("*.json")):
        m = json.loads(f.read_text())
        secs[m["stage"]] = round((datetime.fromisoformat(m["finished_at"]) -
                                  datetime.fromisoformat(m["started_at"])).total_seconds(), 1)
    return secs


def main(name: str) -> None:
    if not LABELS.exists():
        raise SystemExit(f"{LABELS} not found")
    case = CASES[name]
    out = Path(os.environ.get("BENCH_OUT", f"/tmp/bench_flows_{name}"))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    cfg = None
    if case["config"]:
        cfg = out.parent / f"bench_flows_{name}.yaml"
        cfg.write_text(case["config"])
    first = curate(out, case["args"], cfg)
    first["stage_seconds"] = stage_seconds(out)
    rerun = curate(out, case["args"], cfg)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), Python {platform.python_version()}",
        "case": name, "config": case["config"], "first": first, "rerun": rerun,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"flows_{name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "smoke")

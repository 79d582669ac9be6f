"""Scale benchmark: relabel-collection on a synthetic collection of N small face images.

    PYTHONPATH=$PWD python benchmarks/bench_million.py --n 10000 [--n 100000 ...] [--workers 2]
        [--work /tmp/ferclean_million] [--fer-dir ../shared/data/fer2013] [--keep]

1. **Collection**: N 48x48 grey PNGs made from FER2013 crops (../shared, FER+ "not a face" = 0)
   with random jitter (shift +-3 px, scale 0.9-1.1, rotation +-8 deg, brightness/contrast, mirror),
   written as files in folders of 1,000 plus `manifest.csv` (image_path, label); streamed, never
   all in memory.
2. **Model**: once per work folder, `ferclean curate` on the first 3,000 rows of the FER2013
   manifest with a small training config (the model the scoring uses; not timed).
3. **Run**: `ferclean relabel-collection COLLECTION --model MODEL --out OUT --workers W` as a
   subprocess (faces with `landmarks: fastlm`, the batched setting for crop datasets), then the
   dataset-issue search (`run_dataset_issues` with the model's embeddings) in a second subprocess.
   Peak RSS is the largest sum of RSS over the subprocess and all its children, sampled every
   0.2 s (psutil). Wall time per stage from the stage manifests (OUT/stages/<stage>.json).
4. Results appended to benchmarks/results/million.json and rendered to million.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FER_DEFAULT = ROOT.parent / "shared" / "data" / "fer2013"
RESULTS = ROOT / "benchmarks" / "results"
FACES_CONFIG = {"landmarks": "fastlm", "shard_size": 4096, "contact_sheet_n": 0}
TRAIN_CONFIG = {"epochs": 3, "width": 16, "folds": 2, "checkpoint": False}
RELABEL_STAGES = ["ingest", "faces", "aus", "score"]


def env() -> dict[str, str]:
    # a loaded shared machine starts Prefect's temporary API slower than its 20 s default allows
    return {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300", **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "FERCLEAN_NO_PROGRESS": "1"}


def current_stage(stage_dir: Path, stages: list[str]) -> str:
    """The first of `stages` without a stage manifest yet (OUT/stages/<stage>.json is written when it ends)."""
    return next((s for s in stages if not (stage_dir / f"{s}.json").exists()), "after")


def run_measured(cmd: list[str], progress: Path | None = None, stage_dir: Path | None = None) -> dict:
    """Run `cmd`; wall seconds, CPU seconds (user + sys of it and its reaped descendants) and peak RSS
    (MB, the largest sum over it and all its descendants, sampled every 0.2 s). With `progress`, the
    peak so far is written there every 10 s (numbers survive a run stopped before it ends). With
    `stage_dir` (OUT/stages of relabel-collection) the peak is also kept per stage (`stage_peak_rss_mb`:
    each sample counts for the first stage without a manifest yet)."""
    import resource

    import psutil

    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    by_stage: dict[str, int] = {}
    last = [t0]
    done = threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            peak[0] = max(peak[0], total)
            if stage_dir is not None:
                st = current_stage(stage_dir, RELABEL_STAGES)
                by_stage[st] = max(by_stage.get(st, 0), total)
            if progress is not None and time.perf_counter() - last[0] > 10:
                last[0] = time.perf_counter()
                progress.write_text(json.dumps({"cmd": cmd[3][:40], "elapsed_s": round(last[0] - t0, 1),
                                                "peak_rss_mb": round(peak[0] / 2**20, 1),
                                                "stage_peak_rss_mb": {k: round(v / 2**20, 1) for k, v in by_stage.items()}}))
            done.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    done.set()
    th.join()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{out[-4000:]}")
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    res = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu, 1),
           "peak_rss_mb": round(peak[0] / 2**20, 1), "log_tail": out[-1500:]}
    if stage_dir is not None:
        res["stage_peak_rss_mb"] = {k: round(v / 2**20, 1) for k, v in by_stage.items()}
    return res


def du_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def fer_faces(fer_dir: Path) -> list[tuple[str, str]]:
    with open(fer_dir / "labels.csv") as fh:
        return [(r["image_path"], r["label"]) for r in csv.DictReader(fh) if r["NF"] == "0"]


def make_collection(dest: Path, n: int, fer_dir: Path, seed: int = 0) -> dict:
    """Write N jittered FER crops under dest (folders of 1,000) + manifest.csv; returns timing/disk."""
    if (dest / "manifest.csv").exists() and (dest / ".n").read_text() == str(n):
        return {"reused": True, "disk_mb": du_mb(dest)}
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    base = fer_faces(fer_dir)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    cache: dict[str, np.ndarray] = {}
    with open(dest / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_path", "label"])
        for i in range(n):
            rel, label = base[int(rng.integers(len(base)))]
            img = cache.get(rel)
            if img is None:
                img = cv2.imread(str(fer_dir / rel), cv2.IMREAD_GRAYSCALE)
                if len(cache) < 40_000:
                    cache[rel] = img
            m = cv2.getRotationMatrix2D((24, 24), rng.uniform(-8, 8), rng.uniform(0.9, 1.1))
            m[:, 2] += rng.uniform(-3, 3, 2)
            out = cv2.warpAffine(img, m, (48, 48), borderMode=cv2.BORDER_REFLECT)
            out = np.clip(out * rng.uniform(0.8, 1.2) + rng.uniform(-15, 15), 0, 255).astype(np.uint8)
            if rng.random() < 0.5:
                out = out[:, ::-1]
            sub = f"images/{i // 1000:04d}"
            if i % 1000 == 0:
                (dest / sub).mkdir(parents=True, exist_ok=True)
            path = f"{sub}/s{i:07d}.png"
            cv2.imwrite(str(dest / path), out)
            w.writerow([path, label])
    (dest / ".n").write_text(str(n))
    return {"reused": False, "generate_s": round(time.perf_counter() - t0, 1), "disk_mb": du_mb(dest)}


def train_model(work: Path, fer_dir: Path, workers: int) -> Path:
    """A model trained on the first 3,000 FER2013 rows (once per work folder)."""
    out = work / "model_run"
    if (out / "model" / "model.json").is_file():
        return out / "model"
    cfg = work / "train.json"
    cfg.write_text(json.dumps({"faces": FACES_CONFIG, "train": TRAIN_CONFIG}))
    r = run_measured([sys.executable, "-m", "ferclean.cli", "curate", str(fer_dir / "labels.csv"), "--out", str(out),
                      "--limit", "3000", "--config", str(cfg), "--workers", str(workers), "--no-progress"])
    print(f"model trained in {r['wall_s']} s")
    return out / "model"


ISSUES_SNIPPET = """
import sys, json, time
from ferclean.store import Store
from ferclean.runs import open_run
from ferclean.dataset_issues import run_dataset_issues
from ferclean.dataset_issues.config import DatasetIssuesConfig
store = Store(sys.argv[1])
t = time.perf_counter()
with open_run(store, "dataset-issues", {}) as run:
    s = run_dataset_issues(store, run, DatasetIssuesConfig(model_dir=sys.argv[2]), progress=False)
s.pop("phases", None)  # in OUT/runs/<run_id>/dataset_issues_phases.json; the log tail parsed here is short
print("SUMMARY", json.dumps({"wall_s": time.perf_counter() - t, "summary": s}, default=str))
"""


def stage_times(out: Path) -> dict[str, float]:
    times = {}
    for p in sorted((out / "stages").glob("*.json")):
        m = json.loads(p.read_text())
        if m.get("started_at") and m.get("finished_at"):
            dt = datetime.fromisoformat(m["finished_at"]) - datetime.fromisoformat(m["started_at"])
            times[p.stem] = round(dt.total_seconds(), 1)
    return times


def bench(n: int, args: argparse.Namespace, model: Path) -> dict:
    coll = args.work / f"collection_{n}"
    gen = make_collection(coll, n, args.fer_dir)
    out = args.work / f"out_{n}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = args.work / "relabel.json"
    cfg.write_text(json.dumps({"faces": FACES_CONFIG}))
    rc = run_measured([sys.executable, "-m", "ferclean.cli", "relabel-collection", str(coll / "manifest.csv"),
                       "--model", str(model), "--out", str(out), "--config", str(cfg), "--workers", str(args.workers),
                       "--no-progress"], progress=args.work / f"progress_{n}_relabel.json", stage_dir=out / "stages")
    stages = stage_times(out)
    issues = None
    if not args.relabel_only:
        issues = run_measured([sys.executable, "-c", ISSUES_SNIPPET, str(out), str(model)],
                              progress=args.work / f"progress_{n}_issues.json")
    line = None if issues is None else next((x for x in issues["log_tail"].splitlines() if x.startswith("SUMMARY ")),
                                            None)
    issue_parts = {}
    if line:
        summary = json.loads(line[8:])
        stages["dataset_issues"] = round(summary["wall_s"], 1)
        issue_parts = {k: v for k, v in summary["summary"].items() if k.endswith("_s")}
    res = {
        "n": n, "workers": args.workers, "cpus": os.cpu_count(), "date": datetime.now().isoformat(timespec="seconds"),
        "collection": gen, "relabel_collection": {k: v for k, v in rc.items() if k != "log_tail"},
        "dataset_issues": None if issues is None else {k: v for k, v in issues.items() if k != "log_tail"},
        "stage_s": stages,
        "dataset_issues_parts_s": issue_parts,
        "cpu_s_per_image": {"relabel_collection": round(rc["cpu_s"] / n, 5),
                            "dataset_issues": None if issues is None else round(issues["cpu_s"] / n, 5)},
        "images_per_s": {k: round(n / v, 1) for k, v in stages.items() if v > 0},
        "end_to_end_images_per_s": round(n / (rc["wall_s"] + (issues["wall_s"] if issues else 0)), 1),
        "out_disk_mb": du_mb(out),
        "faces_config": FACES_CONFIG,
        **({"code": args.code} if args.code else {}),
    }
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return res


def issues_only(n: int, work: Path, model: Path) -> dict:
    """The dataset-issue search alone on the kept OUT of an earlier --keep run of size n."""
    r = run_measured([sys.executable, "-c", ISSUES_SNIPPET, str(work / f"out_{n}"), str(model)],
                     progress=work / f"progress_{n}_issues_rerun.json")
    line = next((x for x in r["log_tail"].splitlines() if x.startswith("SUMMARY ")), None)
    summary = json.loads(line[8:])["summary"] if line else {}
    phases = max((work / f"out_{n}" / "runs").glob("*/dataset_issues_phases.json"), key=lambda p: p.stat().st_mtime,
                 default=None)
    res = {"n": n, "date": datetime.now().isoformat(timespec="seconds"), "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
           "cpu_ms_per_image": round(r["cpu_s"] / n * 1000, 2), "peak_rss_mb": r["peak_rss_mb"],
           "parts_s": {k: v for k, v in summary.items() if k.endswith("_s")},
           # wall / CPU seconds and peak RSS at the end of each phase (ferclean.dataset_issues.phases)
           "phases": json.loads(phases.read_text()) if phases else {},
           "command": f"dataset-issue search alone (ISSUES_SNIPPET) on the kept OUT of the {n:,} run"}
    path = RESULTS / "million_issues_rerun.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(rows + [res], indent=1))
    return res


def to_markdown(rows: list[dict]) -> str:
    stages = ["ingest", "faces", "aus", "score", "dataset_issues"]
    head = ("Synthetic collections of N jittered 48x48 FER2013 crops (files + manifest); model trained once on "
            "3,000 FER2013 rows; faces with `landmarks: fastlm`; dataset-issue search run after. "
            "Shared 2-core machine (other engineers' jobs running, load average 5-12): wall times are upper "
            "bounds, CPU seconds (user + sys of the process tree) are the comparable cost.")
    lines = ["# relabel-collection at scale (benchmarks/bench_million.py)", "", head, "",
             "| N | date | relabel-collection wall s / CPU s | dataset_issues wall s / CPU s | CPU ms per image "
             "(relabel / issues) | peak RSS MB (relabel / issues) | collection MB | OUT MB | "
             + " | ".join(f"{s} s" for s in stages) + " |",
             "|" + "---|" * (8 + len(stages))]
    for r in sorted((r for r in rows if not r.get("partial")), key=lambda r: (r["date"], r["n"])):
        rc = r["relabel_collection"]
        di = r["dataset_issues"] or {"wall_s": "not run", "cpu_s": "", "peak_rss_mb": "-"}  # --relabel-only
        per = r.get("cpu_s_per_image")
        per_di = f"{per['dataset_issues'] * 1000:.2f}" if per and per.get("dataset_issues") is not None else "-"
        lines.append(
            f"| {r['n']:,} | {r['date'][:16]} | {rc['wall_s']} / {rc.get('cpu_s', '')} | {di['wall_s']} / "
            f"{di.get('cpu_s', '')} | "
            + (f"{per['relabel_collection'] * 1000:.2f} / {per_di}" if per else "") + " | "
            f"{rc['peak_rss_mb']} / {di['peak_rss_mb']} | {r['collection']['disk_mb']} | {r['out_disk_mb']} | "
            + " | ".join(str(r["stage_s"].get(s, "")) for s in stages) + " |")
    notes = [f"- {r['date'][:16]}, N = {r['n']:,}: {r['code']}" for r in rows if r.get("code")]
    if notes:
        lines += ["", "Code of each row:", *notes]
    staged = [r for r in rows if r.get("relabel_collection", {}).get("stage_peak_rss_mb")]
    if staged:
        names = [*RELABEL_STAGES, "after"]
        lines += ["", ("Peak RSS MB of the relabel-collection process tree by stage (sampled every 0.2 s; a sample "
                       "counts for the first stage without a manifest yet):"), "",
                  "| N | date | " + " | ".join(names) + " |", "|" + "---|" * (2 + len(names))]
        for r in sorted(staged, key=lambda r: (r["date"], r["n"])):
            sp = r["relabel_collection"]["stage_peak_rss_mb"]
            lines.append(f"| {r['n']:,} | {r['date'][:16]} | " + " | ".join(str(sp.get(k, "")) for k in names) + " |")
    for r in (r for r in rows if r.get("partial")):
        lines += ["", f"**Unfinished run, N = {r['n']:,}** ({r['note']}; measured at {r['measured_at']}):", "",
                  "```json", json.dumps({k: v for k, v in r.items() if k not in ("note", "partial")}, indent=1), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, action="append", required=True, help="collection size (repeatable)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ferclean_million"))
    ap.add_argument("--fer-dir", type=Path, default=FER_DEFAULT)
    ap.add_argument("--keep", action="store_true", help="keep each OUT folder")
    ap.add_argument("--issues-only", action="store_true",
                    help="rerun only the dataset-issue search on each kept WORK/out_N (after a --keep run); "
                         "appends to benchmarks/results/million_issues_rerun.json")
    ap.add_argument("--relabel-only", action="store_true",
                    help="run relabel-collection only (no dataset-issue search after it)")
    ap.add_argument("--code", default="", help="which code the rows measure (a note in million.md)")
    args = ap.parse_args()
    if not (args.fer_dir / "labels.csv").exists():
        sys.exit(f"FER2013 not found at {args.fer_dir} (../shared/data/fer2013)")
    args.work.mkdir(parents=True, exist_ok=True)
    model = train_model(args.work, args.fer_dir, args.workers)
    if args.issues_only:
        for n in args.n:
            print(json.dumps(issues_only(n, args.work, model)))
        return
    path = RESULTS / "million.json"
    for n in args.n:
        r = bench(n, args, model)
        print(json.dumps(r, indent=1))
        rows = json.loads(path.read_text()) if path.exists() else []  # re-read: another size may run alongside
        rows.append(r)
        path.write_text(json.dumps(rows, indent=1))
        (RESULTS / "million.md").write_text(to_markdown(rows))


if __name__ == "__main__":
    main()

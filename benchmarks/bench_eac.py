"""EAC vs ce vs ulcag side by side on FER2013 rows, and cross-fit wall time with folds in processes (issue 17).

Every arm cross-fits 3 folds on the same rows with the same fast config (32 px, width 16, 6 epochs,
compact CNN, the project's augmentation) and is scored against the FER+ crowd plurality:
  oof_acc      out-of-fold argmax == plurality (rows with a 7-class plurality, label not ambiguous)
  verdicts     the default verdict rule (`verdict_rows`, RelabelConfig(method=...)) on the out-of-fold
               scores alone (no AU view: these runs have no aus table; ulcag gets EMFACS prototype
               pseudo AUs, as the train stage does without an aus table): flag P/R/F1 and final-label
               accuracy before/after (quality_small._score)
Subsets: train3500 = labels.csv train rows .sample(3500, random_state=3), train8k = .sample(8000,
random_state=17) (the quality_small source collection), valid = all 3,579 valid rows.

    python benchmarks/bench_eac.py compare --subset train3500 --arm ce=ce --arm eac5=eac:eac_lambda=5
    python benchmarks/bench_eac.py workers --subset valid --repeats 3 --setting 1x1 --setting 2x1
Each call merges its numbers into benchmarks/results/eac.json (wall and CPU seconds beside each).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bench_common import PLURALITY
from quality_small import _score

from ferclean.classes import FER7
from ferclean.noise import RelabelConfig, final_labels
from ferclean.relabel import verdict_rows
from ferclean.train.config import TrainConfig
from ferclean.train.data import cooccurrence_graph, decode_crops, prototype_aus
from ferclean.train.engine import AUX_METHODS
from ferclean.train.stage import crossfit

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013"
RESULTS = Path(__file__).resolve().parent / "results" / "eac.json"
FAST = {"input_size": 32, "width": 16, "epochs": 6, "folds": 3, "backbone": "cnn", "checkpoint": False}
SUBSETS = {"train3500": ("train", 3500, 3), "train8k": ("train", 8000, 17), "valid": ("valid", None, 0)}


def _merge(key: str, value: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    cur = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    cur[key] = value
    RESULTS.write_text(json.dumps(cur, indent=2, default=str))
    print(json.dumps({key: value}, default=str), flush=True)


def load_subset(name: str) -> tuple[pd.DataFrame, np.ndarray]:
    split, n, seed = SUBSETS[name]
    df = pd.read_csv(ROOT / "labels.csv")
    df = df[df.split == split]
    if n is not None:
        df = df.sample(n, random_state=seed)
    df = df.reset_index(drop=True)
    cache = Path(f"/tmp/bench_eac_{name}_32.npy")
    if cache.exists():
        images = np.load(cache)
    else:
        images = decode_crops([ROOT / p for p in df.image_path], FAST["input_size"])
        np.save(cache, images)
    return df, images


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def run_arm(df: pd.DataFrame, images: np.ndarray, method: str, overrides: dict) -> dict:
    labels = np.array([FER7.index(x) for x in df.label])
    names = list(df.label)
    plural = np.array([FER7.index(PLURALITY[p]) if isinstance(p, str) and PLURALITY.get(p) in FER7 else -1
                       for p in df.ferplus_majority])
    ev = (plural >= 0) & ~df.label_ambiguous.astype(bool).to_numpy()
    cfg = TrainConfig(**{**FAST, "methods": [method], "final_method": method, **overrides})
    aus = a_bar = None
    if method in AUX_METHODS:
        aus = prototype_aus(names)
        a_bar = cooccurrence_graph(aus)
    t, c = time.perf_counter(), _cpu()
    res = crossfit(images, labels, method, cfg, aus, a_bar)
    wall, cpu = time.perf_counter() - t, _cpu() - c
    probs = res["probs"].astype(np.float64)
    probs /= probs.sum(1, keepdims=True)
    ids = [str(i) for i in range(len(df))]
    info: dict = {}
    tab = verdict_rows(ids, names, list(FER7), probs, res["alpha"], res["sem_dist"], np.ones(len(ids), bool),
                       [None] * len(ids), RelabelConfig(method=method), "x", method, trust=info)
    act = np.array(tab["action"].to_pylist(), dtype=object)
    fin = final_labels(labels, act, np.array([FER7.index(s) for s in tab["label_suggested"].to_pylist()]))
    last = [h for h in res["history"] if h["epoch"] == cfg.epochs - 1]
    return {"method": method, "overrides": overrides, "rows": len(df),
            "oof_acc": round(float((probs.argmax(1) == plural)[ev].mean()), 4),
            "oof_acc_vs_given": round(float((probs.argmax(1) == labels).mean()), 4),
            "verdicts": _score(list(FER7), labels, plural, ev, act, fin), "trust": info,
            "last_epoch_train_acc": round(float(np.mean([h["acc"] for h in last])), 4),
            "last_epoch_consistency": (round(float(np.mean([h["consistency"] for h in last])), 5)
                                       if last and "consistency" in last[0] else None),
            "crossfit_wall_s": round(wall, 1), "crossfit_cpu_s": round(cpu, 1),
            "load_avg_1m_end": round(os.getloadavg()[0], 2)}


def _parse_arm(spec: str) -> tuple[str, str, dict]:
    name, rest = spec.split("=", 1)
    method, _, kv = rest.partition(":")
    over: dict = {}
    for item in filter(None, kv.split(";")):
        k, v = item.split("=", 1)
        try:
            over[k] = json.loads(v)
        except json.JSONDecodeError:
            over[k] = v
    return name, method, over


def workers(subset: str, settings: list[str], repeats: int, method: str, key: str) -> dict:
    """Cross-fit wall and CPU time per setting WxT (W fold processes, T torch threads each), interleaved;
    merged into eac.json under `key` after every run (a run stopped half-way keeps what it measured)."""
    df, images = load_subset(subset)
    labels = np.array([FER7.index(x) for x in df.label])
    out: dict = {s: {"wall_s": [], "cpu_s": [], "load_avg_1m_start": []} for s in settings}
    probs: dict = {}
    for _ in range(repeats):
        for s in settings:
            w, t = (int(v) for v in s.split("x"))
            cfg = TrainConfig(**{**FAST, "fold_workers": w, "num_threads": t})
            if w > 1:  # the threads a worker really gets come from the config's share-out; say so
                out[s]["threads_per_worker"] = cfg.threads_per_fold_worker(cfg.resolved_fold_workers(3))
            out[s]["load_avg_1m_start"].append(round(os.getloadavg()[0], 2))
            t0, c0 = time.perf_counter(), _cpu()
            res = crossfit(images, labels, method, cfg)
            out[s]["wall_s"].append(round(time.perf_counter() - t0, 1))
            out[s]["cpu_s"].append(round(_cpu() - c0, 1))
            probs[s] = res["probs"]
            _merge(key, {"subset": subset, "rows": len(df), "method": method, "config": FAST, "partial": True,
                         "settings": out})
    base = settings[0]
    for s in settings:
        out[s]["wall_ratio_to_" + base] = [round(a / b, 3) for a, b in zip(out[s]["wall_s"], out[base]["wall_s"],
                                                                           strict=True)]
        out[s]["max_abs_prob_diff_vs_" + base] = float(np.abs(probs[s] - probs[base]).max())
    return {"subset": subset, "rows": len(df), "method": method, "config": FAST, "repeats": repeats,
            "cores": os.cpu_count(), "settings": out}


def table() -> str:
    """The compare arms of eac.json as a markdown table (what eac.md quotes)."""
    cur = json.loads(RESULTS.read_text())
    lines = [("| rows | arm | lambda | oof acc vs crowd | flag P / R / F1 | relabel / review | final-label acc "
             "before -> after (points) | last-epoch train acc | cross-fit wall / CPU s | load avg |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in cur.items():
        if key.startswith("workers/"):
            continue
        v = r["verdicts"]
        lam = r["overrides"].get("eac_lambda", "") if r["method"] == "eac" else ""
        lines.append(f"| {key.split('/')[0]} | {key.split('/')[1]} | {lam} | {r['oof_acc']:.4f} | "
                     f"{v['precision']:.3f} / {v['recall']:.3f} / {v['f1']:.3f} | {v['relabel']} / {v['review']} | "
                     f"{v['acc_before']:.4f} -> {v['acc_after']:.4f} ({v['gain_points']:+.2f}) | "
                     f"{r['last_epoch_train_acc']:.3f} | {r['crossfit_wall_s']} / {r['crossfit_cpu_s']} | "
                     f"{r['load_avg_1m_end']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="phase", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--subset", choices=list(SUBSETS), required=True)
    c.add_argument("--arm", action="append", required=True, help="NAME=METHOD[:key=value;key=value]")
    w = sub.add_parser("workers")
    w.add_argument("--subset", choices=list(SUBSETS), default="valid")
    w.add_argument("--setting", action="append", required=True, help="WxT: W fold processes, T threads (first = base)")
    w.add_argument("--repeats", type=int, default=3)
    w.add_argument("--method", default="ce")
    w.add_argument("--tag", default="")
    sub.add_parser("table")
    a = ap.parse_args()
    if a.phase == "table":
        print(table())
    elif a.phase == "compare":
        df, images = load_subset(a.subset)
        for spec in a.arm:
            name, method, over = _parse_arm(spec)
            _merge(f"{a.subset}/{name}", run_arm(df, images, method, over))
    else:
        key = f"workers/{a.subset}/{a.method}{a.tag}"
        _merge(key, workers(a.subset, a.setting, a.repeats, a.method, key))


if __name__ == "__main__":
    main()

"""Dataset issues on ../shared/data/fer2013: duplicate clusters, conflicts, train/valid leaks,
and not-a-face recall against the FER+ crowd (NF votes).

Part A, all 32,139 rows, samples only: ingest labels.csv -> run_dataset_issues.
Part B, faces signals on a subset (every row with an NF or >= 5 unknown votes plus a random
sample of the rest): ingest -> run_faces (dlib) -> run_dataset_issues; not-a-face recall and
false positives with the detection/quality evidence.
Part C (--with-model): train a small CE model on that subset and rerun with its embeddings.

    python benchmarks/fer_dataset_issues.py [--subset-random 600] [--out /tmp/fer_issues]
writes benchmarks/results/dataset_issues_fer.json (the Markdown summary is dataset_issues.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import time
from pathlib import Path

os.environ.setdefault("FERCLEAN_NO_PROGRESS", "1")

import pyarrow.compute as pc  # noqa: E402

from ferclean.dataset_issues import DatasetIssuesConfig, run_dataset_issues, sample_issue_reasons  # noqa: E402
from ferclean.ingest import IngestConfig, run_ingest  # noqa: E402
from ferclean.runs import open_run  # noqa: E402
from ferclean.store import Store  # noqa: E402

FER = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013"
RESULTS = Path(__file__).resolve().parent / "results"


def _int(v: object) -> int:
    try:
        return int(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def evaluate(store: Store) -> dict:
    """Counts from the dataset_issues table joined with the samples' FER+ votes."""
    s = store.read("samples").to_pylist()
    by_id = {r["sample_id"]: r for r in s}
    issues = store.read("dataset_issues").to_pylist()
    types: dict[str, list[dict]] = {}
    for r in issues:
        types.setdefault(r["issue_type"], []).append(r)
    clusters: dict[str, dict] = {}
    for r in issues:
        if r["cluster_id"]:
            c = clusters.setdefault(r["cluster_id"], {"members": set(), "types": set()})
            c["members"] |= set(r["sample_ids"])
            c["types"].add(r["issue_type"])
    exact_only = [c for c in clusters.values() if "near_duplicate" not in c["types"]]
    near = [c for c in clusters.values() if "near_duplicate" in c["types"]]

    def splits_of(c: dict) -> set[str]:
        return {by_id[m]["split"] for m in c["members"]}

    nf_flag = {r["sample_ids"][0] for r in types.get("not_a_face", [])}
    out = {
        "samples": len(s),
        "exact_duplicate_groups": len(types.get("exact_duplicate", [])),
        "samples_in_exact_groups": sum(len(r["sample_ids"]) for r in types.get("exact_duplicate", [])),
        "clusters_total": len(clusters),
        "clusters_exact_only": len(exact_only),
        "clusters_near": len(near),
        "samples_in_clusters": sum(len(c["members"]) for c in clusters.values()),
        "conflicting_clusters": len(types.get("conflicting_labels", [])),
        "conflicting_exact_only": sum(1 for c in exact_only if "conflicting_labels" in c["types"]),
        "conflicting_near": sum(1 for c in near if "conflicting_labels" in c["types"]),
        "split_leak_clusters": len(types.get("split_leak", [])),
        "leak_clusters_train_valid": sum(1 for c in clusters.values() if {"train", "valid"} <= splits_of(c)),
        "samples_marked_duplicate": sum(1 for v in sample_issue_reasons(store).values() if "duplicate" in v),
        "not_a_face_flagged": len(nf_flag),
        "outliers_flagged": len(types.get("outlier", [])),
    }
    in_conflict = set().union(*[set(r["sample_ids"]) for r in types.get("conflicting_labels", [])] or [set()])
    amb = [r["sample_id"] for r in s if str(r.get("label_ambiguous")) in ("True", "true", "1")]
    out["label_ambiguous_rows"] = len(amb)
    out["label_ambiguous_in_conflicting_clusters"] = sum(1 for a in amb if a in in_conflict)
    for name, pred in {
        "nf_ge5": lambda r: _int(r.get("NF")) >= 5,
        "nf_or_unknown_ge5": lambda r: _int(r.get("NF")) + _int(r.get("unknown")) >= 5,
        "nf_ge1": lambda r: _int(r.get("NF")) >= 1,
    }.items():
        pos = {r["sample_id"] for r in s if pred(r)}
        tp = len(pos & nf_flag)
        out[f"{name}_positives"] = len(pos)
        out[f"{name}_flagged"] = tp
        out[f"{name}_recall"] = round(tp / len(pos), 4) if pos else None
        out[f"{name}_false_positives"] = len(nf_flag - pos)
    return out


def threshold_study(pairs_per_distance: int = 200) -> dict:
    """Nearest-neighbour pHash distances over all FER2013 PNGs and, per distance, the share of
    sampled nearest-neighbour pairs whose pixels correlate > 0.8 / > 0.9 (the same photo)."""
    import numpy as np
    from PIL import Image

    from ferclean.dataset_issues.neighbors import hamming
    from ferclean.dataset_issues.phash import hash_images

    with open(FER / "labels.csv") as f:
        files = sorted({str(FER / r["image_path"]) for r in csv.DictReader(f)})
    h, *_ = hash_images(files)
    nn = np.zeros(len(h), np.int64)
    nnj = np.zeros(len(h), np.int64)
    for s0 in range(0, len(h), 1000):
        d = hamming(h[s0 : s0 + 1000, None], h[None, :]).astype(np.int16)
        d[np.arange(len(d)), np.arange(s0, s0 + len(d))] = 99
        nn[s0 : s0 + 1000], nnj[s0 : s0 + 1000] = d.min(1), d.argmin(1)

    def pix(i: int) -> np.ndarray:
        a = np.asarray(Image.open(files[i]).convert("L"), np.float32).ravel()
        return (a - a.mean()) / (a.std() + 1e-6)

    rng = np.random.default_rng(1)
    out = {"files": len(files), "nn_distance_hist": {int(k): int(v) for k, v in enumerate(np.bincount(nn)) if v}}
    for k in range(0, 12, 2):
        cand = np.flatnonzero(nn == k)
        if not len(cand):
            continue
        pick = rng.choice(cand, min(len(cand), pairs_per_distance), replace=False)
        corr = np.array([float(np.mean(pix(i) * pix(nnj[i]))) for i in pick])
        out[f"d{k}"] = {"pairs": len(pick), "corr_gt_0.8": round(float((corr > 0.8).mean()), 3),
                        "corr_gt_0.9": round(float((corr > 0.9).mean()), 3)}
    return out


def stage(store: Store, cfg: DatasetIssuesConfig) -> dict:
    t = time.perf_counter()
    with open_run(store, "dataset_issues", cfg.model_dump()) as run:
        summary = run_dataset_issues(store, run, cfg, progress=False)
    summary["wall_s"] = round(time.perf_counter() - t, 2)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/fer_dataset_issues")
    ap.add_argument("--subset-random", type=int, default=600)
    ap.add_argument("--skip-faces", action="store_true")
    ap.add_argument("--with-model", action="store_true", help="part C: train a toy model on the subset")
    ap.add_argument("--threshold-study", action="store_true",
                    help="only the pHash threshold study -> results/dataset_issues_threshold.json")
    ap.add_argument("--faces-store", help="part D only: a curate folder with faces for all of FER2013 (e.g. "
                    "`ferclean curate labels.csv --out X --until faces`): not-a-face recall with every signal "
                    "-> results/dataset_issues_nonface_full{TAG}.json")
    ap.add_argument("--tag", default="", help="suffix of the part D result file, e.g. _dlib")
    args = ap.parse_args()
    if args.faces_store:
        fstore = Store(Path(args.faces_store))
        cfg = DatasetIssuesConfig()
        res = {"machine": f"{platform.machine()} {os.cpu_count()} CPU cores, Python {platform.python_version()}",
               "store": args.faces_store, "config": cfg.model_dump(), "stage": stage(fstore, cfg),
               **{k: v for k, v in evaluate(fstore).items() if "not_a_face" in k or k.startswith("nf")}}
        issues = fstore.read("dataset_issues").to_pylist()
        res["not_a_face_top"] = sorted(
            [{"sample_id": r["sample_ids"][0], "score": round(r["score"], 4), **json.loads(r["details"])}
             for r in issues if r["issue_type"] == "not_a_face"], key=lambda r: -r["score"])[:200]
        (RESULTS / f"dataset_issues_nonface_full{args.tag}.json").write_text(json.dumps(res, indent=1))
        print(json.dumps({k: v for k, v in res.items() if k != "not_a_face_top"}, indent=1))
        return
    if args.threshold_study:
        study = threshold_study()
        (RESULTS / "dataset_issues_threshold.json").write_text(json.dumps(study, indent=1))
        print(json.dumps(study, indent=1))
        return
    if not (FER / "labels.csv").exists():
        raise SystemExit(f"FER2013 not found at {FER}")
    out = Path(args.out)
    result: dict = {"machine": f"{platform.machine()} {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}"}

    # A: everything, samples only
    store = Store(out / "full")
    if store.count("samples") == 0:
        with open_run(store, "ingest", {}) as run:
            run_ingest(store, run, IngestConfig(source=str(FER / "labels.csv")), progress=False)
    cfg = DatasetIssuesConfig()
    result["config"] = cfg.model_dump()
    result["full_stage"] = stage(store, cfg)
    result["full"] = evaluate(store)
    for k in (0, 2, 6):  # sensitivity of the cluster counts to the Hamming threshold
        s2 = stage(store, DatasetIssuesConfig(max_hamming=k))
        result[f"full_max_hamming_{k}"] = {"stage": s2, **evaluate(store)}
    stage(store, cfg)  # leave the default output in place

    # B: subset with faces
    if not args.skip_faces:
        from ferclean.faces import FacesConfig, run_faces

        with open(FER / "labels.csv") as f:
            rows = list(csv.DictReader(f))
        flagged = [r for r in rows if _int(r["NF"]) >= 1 or _int(r["unknown"]) >= 5]
        rest = [r for r in rows if r not in flagged]
        random.Random(0).shuffle(rest)
        sub = flagged + rest[: args.subset_random]
        sub_dir = out / "subset"
        sub_dir.mkdir(parents=True, exist_ok=True)
        manifest = sub_dir / "labels_subset.csv"
        with open(manifest, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(sub)
        sstore = Store(sub_dir / "out")
        if sstore.count("samples") == 0:
            with open_run(sstore, "ingest", {}) as run:
                run_ingest(sstore, run, IngestConfig(source=str(manifest), root=str(FER)), progress=False)
        t = time.perf_counter()
        with open_run(sstore, "faces", {}) as run:
            fs = run_faces(sstore, run, FacesConfig(workers=1), progress=False)
        result["subset_faces"] = {"wall_s": round(time.perf_counter() - t, 1),
                                  "detector_counts": fs.get("detector_counts")}
        result["subset_stage"] = stage(sstore, cfg.model_copy(update={"use_model": False}))
        result["subset"] = evaluate(sstore)
        det = sstore.read("faces", columns=["sample_id", "detector", "is_primary"])
        det = det.filter(pc.field("is_primary"))
        result["subset"]["full_frame_primary_faces"] = det.filter(pc.field("detector") == "full_frame").num_rows

    # C: the same subset with a small model trained on it (integration of the model signals)
    if args.with_model and not args.skip_faces:
        from ferclean.train import TrainConfig, run_train

        tcfg = TrainConfig(methods=["ce"], final_method="ce", epochs=4, folds=2)
        t = time.perf_counter()
        if not (sstore.root / "model" / "model.pt").exists():
            with open_run(sstore, "train", tcfg.model_dump()) as run:
                run_train(sstore, run, tcfg, progress=False)
        result["subset_model"] = {"train": "ce, 2 folds, 4 epochs, on the subset only (a toy model)",
                                  "wall_s": round(time.perf_counter() - t, 1)}
        result["subset_model_stage"] = stage(sstore, cfg)
        result["subset_model_eval"] = evaluate(sstore)

    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dataset_issues_fer.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()

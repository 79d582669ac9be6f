"""Benchmark of the fastlm landmark path against dlib and decode-only (needs ../shared/data/fer2013).

(b) throughput on the first `--fer-n` FER2013 crops, same run: cv2.imread only (1 and 2 processes),
    run_faces with landmarks=fastlm and with landmarks=dlib (FacesConfig defaults otherwise,
    `--workers` processes), then faces+aus (run_aus, geometric backend) on each store;
    plus a single-process per-image cost breakdown of the fastlm path.
(c) AU12-for-happy AUROC (and the other prototype AUs) on FER+ rows with >= 7/10 votes, AUs from
    fastlm landmarks vs from the dlib targets of the stage's own path (cached by
    benchmarks/train_fastlm.py in /tmp/ferclean_fastlm/targets.npz; run that first).

    python benchmarks/bench_fastlm.py [--fer-n 2000] [--workers 2]
Writes benchmarks/results/fastlm_bench.json (`--out`); e.g. the larger fastlm-only run:
    python benchmarks/bench_fastlm.py --fer-n 10000 --landmarks fastlm --skip-aus-auroc --out fastlm_bench_10k.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("FERCLEAN_NO_PROGRESS", "1")

from bench_common import FER, _decode_chunk, decode_rate, fer_rows, samples_table  # noqa: E402

from ferclean.aus.stage import AusConfig, run_aus  # noqa: E402
from ferclean.faces import FacesConfig, run_faces  # noqa: E402
from ferclean.runs import open_run  # noqa: E402
from ferclean.store import Store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def faces_and_aus(items, cfg: FacesConfig, workdir: Path) -> dict:
    """Wall time of run_faces then run_aus on a fresh store of `items` (48x48 grey crops)."""
    store = Store(workdir)
    store.write_part("samples", "bench", samples_table(items, {p: (48, 48, 1) for _, p in items}))
    t0 = time.perf_counter()
    with open_run(store, "bench-faces", cfg.model_dump(mode="json")) as run:
        fs = run_faces(store, run, cfg, progress=False)
    t1 = time.perf_counter()
    with open_run(store, "bench-aus", {}) as run:
        aus = run_aus(store, run, AusConfig(workers=1), progress=False)
    t2 = time.perf_counter()
    n = len(items)
    return {"faces_per_s": n / (t1 - t0), "faces_s": t1 - t0, "aus_s": t2 - t1, "faces_aus_per_s": n / (t2 - t0),
            "detector_counts": fs["detector_counts"], "quality_flags": fs["quality_flags"], "aus_rows": aus["faces"]}


def breakdown(paths: list[str], n: int = 2000, size: int = 64) -> dict:
    """Per-image microseconds of each step of the fastlm path, single process (1 torch thread)."""
    import cv2

    from ferclean.faces.fastlm import (
        head_pose_batch, landmarks5_batch, limit_threads, predict_landmarks, similarity_transforms)
    from ferclean.faces.fastlm_files import resolve_runtime
    from ferclean.faces.geometry import template5, warp_crop
    from ferclean.faces.png import png_deflated, png_stored
    from ferclean.faces.pose import head_pose
    from ferclean.faces.quality import crop_stats
    from ferclean.faces.stage import load_image

    limit_threads(os.cpu_count() or 1)  # one thread, as in each of the stage's workers
    t: dict = {}

    def timed(name, fn):
        s = time.perf_counter()
        out = fn()
        t[name] = time.perf_counter() - s
        return out

    imgs = timed("decode", lambda: [load_image(p) for p in paths[:n]])
    predict_landmarks(imgs[:64])  # warm up the runtime (session start is not per image)
    lm = timed(f"landmarks_{resolve_runtime('auto')}", lambda: predict_landmarks(imgs))
    for rt in ("torch", "torch-bf16"):
        predict_landmarks(imgs[:64], runtime=rt)
        timed(f"landmarks_{rt}", lambda rt=rt: predict_landmarks(imgs, runtime=rt))
    mats = timed("similarity_batched", lambda: similarity_transforms(landmarks5_batch(lm), template5(size)))
    crops = timed(f"warp_{size}px", lambda: [warp_crop(im, m, size) for im, m in zip(imgs, mats, strict=True)])
    timed("crop_stats", lambda: [crop_stats(c) for c in crops])
    timed("head_pose_solvepnp_per_image", lambda: [head_pose(p, 48, 48) for p in lm])
    timed("head_pose_batched_used", lambda: head_pose_batch(lm, np.full(n, 48.0), np.full(n, 48.0)))
    timed("png_stored_used", lambda: [png_stored(c) for c in crops])
    timed("png_opencv_deflate", lambda: [png_deflated(c) for c in crops])
    del cv2
    return {k: round(v / n * 1e6, 1) for k, v in t.items()}


def au_comparison(min_votes: int = 7) -> dict:
    """Prototype-AU AUROCs on high-agreement FER+ rows from fastlm vs dlib landmarks."""
    from validate_aus import evaluate, load_rows, prototype_aurocs

    from ferclean.aus.names import AU_NAMES
    from ferclean.faces.fastlm import predict_landmarks

    z = np.load("/tmp/ferclean_fastlm/targets.npz", allow_pickle=False)
    index = {p: i for i, p in enumerate(z["paths"])}
    rows = load_rows(min_votes)
    idx = np.array([index[p] for p in rows.image_path])
    dlib_lm = z["lm"][idx].astype(np.float64)
    t = time.perf_counter()
    fast_lm = predict_landmarks(list(z["images"][idx]))
    fast_s = time.perf_counter() - t
    valid = (rows.split == "valid").to_numpy()
    truth = rows.truth.to_numpy()
    out: dict = {"rows": int(len(rows)), "valid_rows": int(valid.sum()), "fastlm_predict_s": round(fast_s, 1)}
    for name, lm in (("dlib", dlib_lm), ("fastlm", fast_lm)):
        res = evaluate(rows, lm)
        va = prototype_aurocs(res["intensity"][valid], truth[valid], AU_NAMES)
        out[name] = {"AU12_happy_auroc": round(res["aurocs"]["happy"]["AU12"], 4),
                     "AU12_happy_auroc_valid": round(va["happy"]["AU12"], 4),
                     "mean_prototype_auroc": round(res["mean_auroc"], 4),
                     "mean_prototype_auroc_valid": round(float(np.mean([v for d in va.values() for v in d.values()])),
                                                         4),
                     "lr_5fold_accuracy": round(res["lr_acc"], 4),
                     "prototype_auroc": {k: {a: round(v, 3) for a, v in d.items()} for k, d in res["aurocs"].items()}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fer-n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-aus-auroc", action="store_true")
    ap.add_argument("--landmarks", default="fastlm,dlib",
                    help="stage variants to time, comma separated: dlib, fastlm or fastlm:<prealigned crop px>")
    ap.add_argument("--shard-size", type=int, default=250, help="images per shard of the timed stages")
    ap.add_argument("--out", default="fastlm_bench.json", help="file name under benchmarks/results")
    args = ap.parse_args()
    if not (FER / "labels.csv").exists():
        sys.exit(f"FER2013 data not found at {FER}")
    res: dict = {"machine": f"{platform.machine()} {os.cpu_count()} CPU cores (shared), {platform.python_version()}",
                 "workers": args.workers, "fer_n": args.fer_n, "load_avg_start": os.getloadavg()[0]}
    rows = fer_rows(args.fer_n)
    items = [(f"r{i:05d}", FER / r["image_path"]) for i, r in enumerate(rows)]
    paths = [str(p) for _, p in items]
    _decode_chunk(paths)  # warm the file cache
    res["decode_per_s_1proc"] = decode_rate(paths, 1)
    res["decode_per_s"] = decode_rate(paths, args.workers)
    best = max(res["decode_per_s"], res["decode_per_s_1proc"])
    base = FacesConfig(workers=args.workers, shard_size=args.shard_size)
    res["shard_size"] = args.shard_size
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.landmarks.split(","):
            lm, _, crop = name.partition(":")
            cfg = base.model_copy(update={"landmarks": lm, "prealigned_crop_size": int(crop) if crop else None})
            r = faces_and_aus(items, cfg, Path(tmp) / name.replace(":", "_"))
            r["config"] = {"landmarks": lm, "prealigned_crop_size": cfg.prealigned_crop_size,
                           "crop_png": cfg.crop_png, "fastlm_runtime": cfg.fingerprint_dict().get("fastlm_runtime")}
            r["faces_ratio_to_decode"] = r["faces_per_s"] / best
            r["faces_aus_ratio_to_decode"] = r["faces_aus_per_s"] / best
            res[name] = r
            print(name, json.dumps(r, default=str), file=sys.stderr)
        res["decode_per_s_1proc_after"] = decode_rate(paths, 1)
    res["fastlm_breakdown_us_per_image_1proc"] = breakdown(paths)
    if not args.skip_aus_auroc:
        res["au_auroc"] = au_comparison()
    res["load_avg_end"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()

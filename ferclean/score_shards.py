"""The score stage in shards: per-shard scoring that a task runner can map (threads, processes, Dask).

The stage's shards are the samples (of one collection) in sample_id order, `batch_size` a shard, keyed like
the image stages' (:func:`ferclean.shards.plan_shards`) by a hash of the model folder, the score settings,
the faces/aus settings and each member's image hash and given label: a part that exists is finished work.
:func:`score_shard` (module level, so a worker process can run it) loads the model once per process
(cached, reloaded when the model folder changes), reads its samples' primary faces and AUs, scores them and

- returns the shard's `predictions` rows (the model's method and the AU view's, fold -1), which
  :func:`ferclean.shards.process_shard` writes as the part `score-<collection>-<key>`;
- writes a compact file `OUT/stages/score.parts/<part key>.parquet` first: per row the numbers the verdict
  rule needs (given label, probabilities, alpha, semantic distances, AU-view probabilities, quality flags),
  and in its metadata the embeddings' sums for the domain-shift guard and which process wrote it.

:func:`ferclean.relabel.score_collection` then decides every part from those compact files in passes
(:func:`ferclean.noise.rule_stats`, :func:`ferclean.noise.decide_part`), without the network.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ferclean.au_view import AU_VIEW_METHOD
from ferclean.domain_shift import embedding_sums
from ferclean.model_dir import ModelDir
from ferclean.shards import Shard, plan_shards, process_shard
from ferclean.stage_cache import folder_fingerprint, path_fingerprint
from ferclean.stage_spec import ShardWork
from ferclean.store import Store

STAGE = "score"
OUT_TABLE = "predictions"
_HASH_KEY = r"[0-9a-f]{20}-\d{5}"
_OLD_KEY = r"[A-Za-z0-9_]+(-\d{5})?"  # score-<collection>-<method>[-<batch>] of earlier versions


@dataclass(frozen=True)
class ScoreJob:
    """What every score shard needs besides its samples."""

    model_dir: str
    run_id: str
    threads: int | None = 1
    infer_batch: int = 128


def part_prefix(collection: str | None) -> str:
    return f"score-{collection or 'all'}-"


def compact_dir(store: Store) -> Path:
    return store.root / "stages" / "score.parts"


def compact_path(store: Store, key: str) -> Path:
    return compact_dir(store) / f"{key}.parquet"


def _upstream(store: Store, stage: str, table: str) -> str:
    """The settings an upstream image stage used (its shard plan's config), else its parts' fingerprint."""
    plan = store.root / "stages" / f"{stage}.shards.parquet"
    if plan.is_file():
        return ",".join(sorted(set(pq.read_table(plan, columns=["config"]).column("config").to_pylist())))
    return path_fingerprint(store, [table])


def score_plan(store: Store, model_dir: str | Path, collection: str | None, batch_size: int, run_id: str,
               threads: int | None = 1, infer_batch: int = 128) -> tuple[list[Shard], ScoreJob]:
    """The score shards of `collection` (None = every sample) and their job."""
    md = ModelDir(model_dir).require()
    job = ScoreJob(str(md.path), run_id, threads, infer_batch)
    dset = store.dataset("samples")
    if dset is None:
        return [], job
    where = pc.field("collection") == collection if collection is not None and "collection" in dset.schema.names \
        else None
    cfg = {"model": folder_fingerprint(md.path), "collection": collection, "batch_size": batch_size,
           "infer_batch": infer_batch, "faces": _upstream(store, "faces", "faces"),
           "aus": _upstream(store, "aus", "aus"), "format": 1}
    raw = plan_shards(store, STAGE, cfg, shard_size=batch_size, table="samples", where=where,
                      content_columns=["label_original"])
    prefix = part_prefix(collection)
    return [Shard(STAGE, s.index, prefix + s.key, s.ids) for s in raw], job


def shard_work(store: Store, config: Any, run_id: str) -> ShardWork:
    """The score stage's per-shard work for the flows to map (ferclean.pipeline registers it); `config` is
    a :class:`ferclean.score.ScoreConfig`."""
    shards, job = score_plan(store, config.model_dir, config.collection, config.batch_size, run_id,
                             config.threads, config.infer_batch)
    return ShardWork(OUT_TABLE, score_shard, job, shards)


def run_score_shards(store: Store, shards: Sequence[Shard], job: ScoreJob, collection: str | None) -> dict[str, int]:
    """Score every shard not done yet in this process (a part without its compact file is redone), then
    remove this collection's stale score parts and compact files. Returns {shards, skipped, rows}."""
    for s in shards:
        if store.has_part(OUT_TABLE, s.key) and not compact_path(store, s.key).is_file():
            store.part_path(OUT_TABLE, s.key).unlink(missing_ok=True)
    todo = [s for s in shards if not store.has_part(OUT_TABLE, s.key)]
    rows = 0
    for s in todo:
        rows += max(process_shard(store, s, OUT_TABLE, score_shard, job)[1], 0)
    keep = {s.key for s in shards}
    stale = re.compile(re.escape(part_prefix(collection)) + f"({_HASH_KEY}|{_OLD_KEY})")
    for key in store.part_keys(OUT_TABLE) - keep:
        if stale.fullmatch(key):
            store.part_path(OUT_TABLE, key).unlink(missing_ok=True)
    if compact_dir(store).is_dir():
        for p in compact_dir(store).glob("*.parquet"):
            key = p.name[: -len(".parquet")]
            if key not in keep and stale.fullmatch(key):
                p.unlink(missing_ok=True)
    return {"shards": len(shards), "skipped": len(shards) - len(todo), "rows": rows}


# -- one shard ----------------------------------------------------------------------------------------

_LOCK = threading.Lock()  # one model load and one forward pass at a time per process (threads runner)
_MODELS: dict[str, tuple[str, Any, Any]] = {}


def _loaded(model_dir: str) -> tuple[Any, Any]:
    """(model, (AU view, its AU names) or None), loaded once per process and model folder state."""
    from ferclean.train.model_io import load_model

    fp = folder_fingerprint(model_dir)
    with _LOCK:
        hit = _MODELS.get(model_dir)
        if hit is None or hit[0] != fp:
            import torch

            md = ModelDir(model_dir)
            model = load_model(md)
            model.net.to(memory_format=torch.channels_last)
            _MODELS.clear()
            _MODELS[model_dir] = hit = (fp, model, md.load_au_view())
        return hit[1], hit[2]


def _fixed(a: np.ndarray, typ: pa.DataType) -> pa.Array:
    a = np.asarray(a)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.ravel(), typ), a.shape[1])


def score_shard(store: Store, shard: Shard, job: ScoreJob) -> pa.Table:
    """Score one shard: write its compact file, return its `predictions` rows."""
    from ferclean.contracts import load_contract, validate
    from ferclean.inference import inference_settings
    from ferclean.score_inputs import shard_score_batch
    from ferclean.train.data import decode_crops
    from ferclean.train.model_io import score
    from ferclean.train.stage import prediction_table

    model, saved_view = _loaded(job.model_dir)
    view, view_names = saved_view if saved_view is not None else (None, None)
    classes, method = list(model.meta["classes"]), model.meta["method"]
    c = len(classes)
    batch = shard_score_batch(store, shard.sample_ids, view_names)
    n = len(batch.sample_ids)
    alpha = sem = None
    probs, emb = np.zeros((0, c), np.float32), np.zeros((0, 1), np.float32)
    if n:
        crops = decode_crops(batch.crops, int(model.meta["input_size"]))
        with _LOCK, inference_settings(model, job.threads):
            probs, alpha, sem, emb = score(model, crops, batch_size=job.infer_batch)
    tables = [prediction_table(job.run_id, batch.sample_ids, method, -1, classes, probs, alpha, sem)]
    au_probs = None
    if view is not None and batch.au is not None:
        known = np.flatnonzero(~np.isnan(batch.au).any(axis=1))
        au_probs = np.full((n, c), np.nan)
        if len(known):
            au_probs[known] = view.predict_proba(batch.au[known])
            tables.append(prediction_table(job.run_id, [batch.sample_ids[i] for i in known], AU_VIEW_METHOD, -1,
                                           classes, au_probs[known], None, None))
    idx = {cl: i for i, cl in enumerate(classes)}
    cols: dict[str, Any] = {
        "sample_id": pa.array(batch.sample_ids, pa.string()),
        "label_original": pa.array(batch.label_names, pa.string()),
        "label": pa.array([idx.get(lab, -1) if lab is not None else -1 for lab in batch.label_names], pa.int8()),
        "probs": _fixed(np.asarray(probs, np.float32).reshape(n, c), pa.float32()),
        "quality": pa.array(batch.quality, pa.list_(pa.string())),
    }
    if alpha is not None:
        cols["alpha"] = pa.array(np.asarray(alpha, np.float32))
    if sem is not None:
        cols["sem"] = _fixed(np.asarray(sem, np.float32), pa.float32())
    if au_probs is not None:
        cols["au"] = _fixed(au_probs, pa.float64())
    ref = model.meta.get("confidence_profile")
    info = {"rows": n, "classes": classes, "method": method, "alpha": alpha is not None, "sem": sem is not None,
            "au": au_probs is not None, "emb": embedding_sums(emb, ref) if n else None,
            "written_by": {"host": socket.gethostname(), "pid": os.getpid()}}
    _write_compact(store, shard.key, pa.table(cols), info)
    contract = load_contract(OUT_TABLE)
    out = pa.concat_tables([validate(t, contract) for t in tables], promote_options="permissive")
    return out.set_column(out.schema.get_field_index("class_order"), "class_order",
                          pc.cast(out["class_order"], pa.string()))


def _write_compact(store: Store, key: str, table: pa.Table, info: dict[str, Any]) -> None:
    path = compact_path(store, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        pq.write_table(table.replace_schema_metadata({"ferclean": json.dumps(info)}), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -- reading the compact files --------------------------------------------------------------------------

def compact_info(path: Path) -> dict[str, Any]:
    """The metadata of a compact file (rows, classes, which columns, embedding sums, writer)."""
    return json.loads(pq.read_schema(path).metadata[b"ferclean"])


def _matrix(col: pa.ChunkedArray, dtype: Any) -> np.ndarray:
    arr = col.combine_chunks()
    width = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(-1, width)


def read_compact(path: Path, columns: Sequence[str], info: dict[str, Any]) -> dict[str, Any]:
    """Some columns of a compact file as numpy (probs, sem float32 -> float64 as the rule takes them; au
    float64; label int64; alpha float32) or Python lists (sample_id, label_original, quality); a column the
    file does not have (no alpha, semantic distances or AU view) is None."""
    have = [c for c in columns if c in pq.read_schema(path).names]
    t = pq.read_table(path, columns=have)
    out: dict[str, Any] = dict.fromkeys(columns)
    for name in have:
        col = t[name]
        if name in ("probs", "sem", "au"):
            out[name] = _matrix(col, np.float64)
        elif name == "label":
            out[name] = col.to_numpy().astype(np.int64)
        elif name == "alpha":
            out[name] = col.to_numpy().astype(np.float32)
        else:
            out[name] = col.to_pylist()
    return out


def iter_compact(store: Store, shards: Sequence[Shard], columns: Sequence[str]) -> Iterator[tuple[dict, dict]]:
    """(info, columns) of each non-empty shard's compact file, in shard order."""
    for s in shards:
        path = compact_path(store, s.key)
        info = compact_info(path)
        if info["rows"]:
            yield info, read_compact(path, columns, info)

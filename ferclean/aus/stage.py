"""The aus stage: `faces` -> table `aus` (one row per face), see :func:`run_aus`."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from ferclean.aus.backends import (
    GeometricBackend,
    aus_table,
    check_pyfeat,
    landmarks_array,
)
from ferclean.aus.geometric import (
    AU_RECIPES,
    GEOMETRIC_VERSION,
    MEASURES,
    Reference,
    fit_reference,
    measure,
    normalise_landmarks,
)
from ferclean.aus.names import AU28_C, AU_NAMES, intensity_columns, presence_columns
from ferclean.shards import Shard, load_rows, plan_shards, run_sharded
from ferclean.stage_spec import ShardWork
from ferclean.store import Store

REFERENCE_FILE = "aus_reference.json"


class AusConfig(BaseModel):
    """Settings of the aus stage (defaults in brackets are what a plain run uses)."""

    backend: Literal["geometric", "openface-csv", "py-feat"] = Field(
        "geometric", description="AU source: landmark geometry, OpenFace 2.0 CSVs, or py-feat")
    landmarks_column: Literal["landmarks68", "landmarks68_crop"] = Field(
        "landmarks68", description="faces column with the 68 landmarks (geometric backend)")
    reference: Literal["conditional", "neutral", "collection"] = Field(
        "conditional", description="neutral value: 'conditional' predicts each face's own neutral for "
        "some measures from its rigid landmarks (ridge fitted on neutral-labelled reference-split faces; "
        "mean prototype AUROC on FER2013 0.682 vs 0.672 for 'neutral', benchmarks/results/aus.md), "
        "'neutral' is the median of those faces, 'collection' the median of all faces; both neutral "
        "options fall back to the collection median when fewer than min_neutral neutral faces")
    reference_split: str = Field("train", description="samples.split the reference is fitted on")
    reference_path: str | None = Field(
        None, description="reuse a stored reference JSON (e.g. the training run's aus_reference.json)")
    min_neutral: int = Field(20, ge=1, description="neutral faces needed to use their median")
    reference_refit_share: float = Field(
        0.05, ge=0, le=1,
        description="keep the previous run's fitted reference while at most this share of the faces it was "
                    "fitted on changed (added, removed, relabelled), so a nightly increment scores only the "
                    "new faces; 0 refits on every change")
    presence_threshold: float = Field(1.0, ge=0, le=5, description="AUxx_c = AUxx_r >= this (robust SDs)")
    lips_part_iod: float = Field(0.05, ge=0, description="AU25 present when the inner-lip gap > this (IOD)")
    blink_ratio: float = Field(0.45, gt=0, lt=1, description="AU45 present when eye aperture < this x neutral")
    openface_csv: str | None = Field(None, description="OpenFace CSV file or folder (openface-csv backend)")
    pyfeat_model_dir: str | None = Field(None, description="folder holding py-feat AU weights (py-feat backend)")
    shard_size: int = Field(8192, ge=1, description="faces' samples per shard (resume unit)")
    workers: int = Field(1, ge=1, description="worker processes for shards")


@dataclass(frozen=True)
class _ShardJob:
    """Everything a worker needs for one geometric shard (picklable)."""

    run_id: str
    backend: GeometricBackend


def _read_reference_faces(store: Store, config: AusConfig) -> pa.Table:
    """Primary faces with their split, label and landmarks (Arrow: sample_id, split, label_original, lm)."""
    faces = store.read("faces", columns=["sample_id", "face_index", "is_primary", config.landmarks_column])
    samples = store.read("samples", columns=["sample_id", "split", "label_original"])
    faces = faces.filter(pc.field("is_primary"))
    idx = pc.index_in(faces["sample_id"], value_set=samples["sample_id"])  # Acero cannot join list columns
    faces = faces.filter(pc.is_valid(idx))
    idx = idx.filter(pc.is_valid(idx))
    return pa.table({"sample_id": faces["sample_id"], "split": samples["split"].take(idx),
                     "label_original": samples["label_original"].take(idx), "lm": faces[config.landmarks_column]})


def _reference_state(store: Store) -> Path:
    """Where the aus stage keeps its last fitted reference and the faces it was fitted on."""
    return store.root / "stages" / "aus.reference.json"


def _fit_settings(config: AusConfig) -> dict:
    return config.model_dump(include={"landmarks_column", "reference", "reference_split", "min_neutral"})


def fit_reference_from_store(store: Store, config: AusConfig) -> Reference:
    """Fit the geometric reference on primary faces of `config.reference_split` samples.

    When that split has no faces (e.g. an unlabelled collection) the reference is fitted on all
    primary faces and its `source` says so; reuse a training run's reference instead where
    possible (`reference_path`). The previous fit is kept while at most
    `config.reference_refit_share` of its faces changed.
    """
    tab = _read_reference_faces(store, config)
    if tab.num_rows == 0:
        raise ValueError("no primary faces with samples to fit an AU reference on")
    part = tab.filter(pc.equal(tab["split"], config.reference_split))
    suffix = ""
    if part.num_rows == 0:
        part, suffix = tab, f" (no {config.reference_split!r} faces: all primary faces)"
    ids = {f"{a}|{b}" for a, b in zip(part["sample_id"].to_pylist(), part["label_original"].to_pylist(), strict=True)}
    state = _reference_state(store)
    if state.is_file():
        prev = json.loads(state.read_text())
        if prev["settings"] == _fit_settings(config):
            changed = len(ids.symmetric_difference(prev["faces"])) / max(len(prev["faces"]), 1)
            if changed <= config.reference_refit_share:
                ref = Reference.from_json(prev["reference"])
                if changed:
                    ref.source += f" (kept from an earlier run: {changed:.1%} of its faces changed)"
                return ref
    lm = landmarks_array(part["lm"])
    pts = normalise_landmarks(lm)[0]
    m = measure(pts)
    neutral = None
    if config.reference in ("neutral", "conditional"):
        neutral = pc.fill_null(pc.equal(part["label_original"], "neutral"), False).to_numpy(zero_copy_only=False)
    ref = fit_reference(m, neutral, config.min_neutral, pts if config.reference == "conditional" else None)
    ref.source += suffix
    state.parent.mkdir(parents=True, exist_ok=True)
    tmp = state.with_name(f".tmp-{state.name}")
    tmp.write_text(json.dumps({"settings": _fit_settings(config), "reference": ref.to_json(), "faces": sorted(ids)}))
    os.replace(tmp, state)
    return ref


def geometric_shard(store: Store, shard: Shard, job: _ShardJob) -> pa.Table:
    rows = load_rows(store, shard, "faces", ["sample_id", "face_index", *job.backend.columns()])
    inten, pres = job.backend.predict(rows)
    return aus_table(job.run_id, rows.column("sample_id").to_pylist(),
                     rows.column("face_index").to_numpy(zero_copy_only=False), job.backend.name, inten, pres)


def _openface(store: Store, run: Any, config: AusConfig) -> dict:
    from ferclean.aus.openface import match_openface

    if not config.openface_csv:
        raise ValueError("backend 'openface-csv' needs config.openface_csv (a CSV file or folder)")
    samples = store.read("samples", columns=["sample_id", "source_path"]).to_pandas()
    df = match_openface(config.openface_csv, samples)
    run.counts["aus.openface_rows_unmatched"] += df.attrs.get("unmatched", 0)
    if store.count("faces"):
        keys = store.read("faces", columns=["sample_id", "face_index"]).to_pandas()
        n0 = len(df)
        df = df.merge(keys.astype({"face_index": int}), on=["sample_id", "face_index"], how="inner")
        run.counts["aus.openface_rows_without_face"] += n0 - len(df)
    df = df.sort_values(["sample_id", "face_index"]).reset_index(drop=True)
    inten = df[intensity_columns()].to_numpy(np.float32, na_value=np.nan)
    pres = df[presence_columns()].astype("float").fillna(-1).to_numpy().astype(np.int8)
    au28 = df[AU28_C].astype("float").fillna(-1).to_numpy().astype(np.int8)
    table = aus_table(run.run_id, df["sample_id"].tolist(), df["face_index"].to_numpy(), "openface-csv",
                      inten, pres, au28)
    digest = hashlib.sha256(str(Path(config.openface_csv).resolve()).encode())
    digest.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    key = f"openface-{digest.hexdigest()[:20]}"
    store.write_part("aus", key, table)
    store.keep_only("aus", [key])
    return {"rows": table.num_rows, "shards": 1, "skipped": 0}


def resolve_reference(store: Store, config: AusConfig) -> Reference:
    """The neutral reference: loaded from `config.reference_path`, else fitted on the store."""
    if config.reference_path:
        ref = Reference.load(config.reference_path)
        ref.source = f"loaded from {config.reference_path} ({ref.source})"
        return ref
    return fit_reference_from_store(store, config)


def geometric_shard_plan(store: Store, config: AusConfig, ref: Reference, run_id: str) -> tuple[list[Shard], _ShardJob]:
    """Shards of `faces` and the per-shard job of the geometric backend (run_aus and the flows).

    The reference is part of the shard keys, so a new reference recomputes every shard.
    """
    backend = GeometricBackend(ref, config.landmarks_column, config.presence_threshold,
                               config.lips_part_iod, config.blink_ratio)
    fingerprint = {"config": config.model_dump(mode="json", exclude={"workers", "reference_path"}),
                   "reference": ref.arrays()[0].tolist() + ref.arrays()[1].tolist(),
                   "conditional": ref.conditional,
                   "recipes": {"version": GEOMETRIC_VERSION, "measures": list(MEASURES),
                               "au": {au: [list(t) for t in r] for au, r in AU_RECIPES.items()}}}
    shards = plan_shards(store, "aus", fingerprint, config.shard_size, table="faces")
    return shards, _ShardJob(run_id, backend)


def shard_work(store: Store, config: AusConfig, run_id: str) -> ShardWork | None:
    """The per-shard work for the flows to map: only the geometric backend is sharded (the others,
    and a store without faces, run whole: None)."""
    if config.backend != "geometric" or store.count("faces") == 0:
        return None
    shards, job = geometric_shard_plan(store, config, resolve_reference(store, config), run_id)
    return ShardWork("aus", geometric_shard, job, shards)


def presence_summary(store: Store) -> dict[str, Any]:
    """faces, unscored (AU01_r null) and the presence rate per AU (mean of the non-null AUxx_c) of the
    `aus` table, summed part by part (memory: one part, not the whole table)."""
    n = unscored = 0
    sums = dict.fromkeys(AU_NAMES, 0)
    valid = dict.fromkeys(AU_NAMES, 0)
    for path in store.part_files("aus"):
        t = pq.read_table(path, columns=["AU01_r", *presence_columns()])
        n += t.num_rows
        unscored += t.column("AU01_r").null_count
        for a in AU_NAMES:
            col = t.column(f"{a}_c")
            sums[a] += int(pc.sum(col).as_py() or 0)
            valid[a] += len(col) - col.null_count
    return {"faces": n, "unscored": unscored,
            "presence_rate": {a: round(sums[a] / valid[a], 4) if n > unscored and valid[a] else None
                              for a in AU_NAMES}}


def run_aus(store: Store, run: Any, config: AusConfig, progress: bool = True) -> dict:
    """Score every face in `faces` and write table `aus` (key (sample_id, face_index)).

    Geometric backend: fits the neutral :class:`Reference` (by default conditional) on the
    reference split (or loads `config.reference_path`), saves it to
    `run.dir / "aus_reference.json"`, then scores faces in shards of `faces` by sample_id
    (resumable; a new reference or config gives new shards).
    Returns a summary: backend, rows, shards, skipped, reference source and path, presence rate
    per AU.
    """
    summary: dict[str, Any] = {"backend": config.backend}
    if config.backend == "py-feat":
        path = check_pyfeat(config.pyfeat_model_dir)
        raise NotImplementedError(f"py-feat AU weights found at {path}, but py-feat inference is not "
                                  "wired into ferclean yet; use backend='geometric' or 'openface-csv'")
    if config.backend == "openface-csv":
        summary.update(_openface(store, run, config))
    else:
        if store.count("faces") == 0:
            raise ValueError("table `faces` is empty: run the faces stage first")
        ref = resolve_reference(store, config)
        ref_path = ref.save(run.dir / REFERENCE_FILE)
        shards, job = geometric_shard_plan(store, config, ref, run.run_id)
        done = run_sharded(store, shards, "aus", geometric_shard, job,
                           config.workers, description="aus", progress=progress)
        summary.update(done)
        summary.update({"reference_source": ref.source, "reference_path": str(ref_path),
                        "reference_faces": ref.n_neutral_value})
    summary.update(presence_summary(store))
    run.counts["aus.rows"] += summary["faces"]
    run.counts["aus.unscored"] += summary["unscored"]
    return summary

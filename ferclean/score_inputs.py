"""Stream the score stage's inputs in bounded batches: one row per sample that has a primary face crop.

Each batch holds sample ids, given labels, the primary face's crop PNG and quality flags, and the AU
intensities (`<AU>_r`) of that same face (:mod:`ferclean.primary`: the aus row joined on
(sample_id, face_index)). The join runs in DuckDB over the tables' Parquet parts with a memory limit
(it spills to disk beyond it), so at most one batch of crops is in Python memory whatever the size
of the collection.

Hand-made tables that lack `is_primary` (faces) or `face_index` (aus) are small by nature: they are
read whole through :mod:`ferclean.primary` and sliced into batches (the same rows).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ferclean.primary import iter_primary_faces, primary_aus, primary_faces


@dataclass
class ScoreBatch:
    """Rows aligned by index: ids, given labels (None = unlabelled), crop PNGs, quality flags,
    AU intensities (n, len(au_names)) float64 with NaN for unknown (None without usable AU columns)."""

    sample_ids: list[str]
    label_names: list[str | None]
    crops: list[bytes]
    quality: list[list[str]]
    au: np.ndarray | None


def _sql_list(paths: Sequence[Any]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _schema_names(store: Any, table: str) -> list[str]:
    dset = store.dataset(table)
    return [] if dset is None else list(dset.schema.names)


def usable_au_columns(store: Any, au_names: Sequence[str]) -> list[str] | None:
    """`<AU>_r` columns for `au_names` when the aus table has every one of them (and a face_index), else None."""
    names = set(_schema_names(store, "aus"))
    cols = [f"{n}_r" for n in au_names]
    return cols if cols and set(cols) <= names else None


def iter_score_batches(store: Any, collection: str | None, au_names: Sequence[str] | None,
                       batch_size: int = 8192) -> Iterator[ScoreBatch]:
    """Batches of at most `batch_size` scoreable samples (a primary face with a crop; of `collection`
    when given). `au_names`: the AU intensities wanted (e.g. the AU view's inputs), or None."""
    faces = _schema_names(store, "faces")
    samples = _schema_names(store, "samples")
    if not faces or not samples or "crop_png" not in faces:
        return
    au_cols = usable_au_columns(store, au_names) if au_names else None
    aus = _schema_names(store, "aus")
    if "is_primary" not in faces or (au_cols and "face_index" not in aus):
        yield from _small_tables(store, collection, au_cols, batch_size)
        return
    yield from _stream_batches(store, collection, au_cols, faces, batch_size)


def _stream_batches(store: Any, collection: str | None, au_cols: list[str] | None, faces: list[str],
                    batch_size: int) -> Iterator[ScoreBatch]:
    """Primary faces streamed part by part (:func:`ferclean.primary.iter_primary_faces`: one batch of crops
    in memory); the given labels
    and the primary faces' AU intensities come from compact lookups held for the run (Arrow ids + labels,
    float32 AUs: ~110 bytes a sample), matched per batch with a hash lookup (pc.index_in)."""
    cols = ["sample_id"] + (["collection"] if collection is not None and "collection" in _schema_names(store, "samples")
                            else [])
    flt = pc.field("collection") == collection if len(cols) > 1 else None
    s = store.read("samples", columns=["sample_id", "label_original"], filter=flt)
    s_ids, s_labels = s["sample_id"].combine_chunks(), s["label_original"].combine_chunks()
    del s
    a_ids = a_vals = None
    if au_cols:
        a = primary_aus(store, au_cols)
        a_ids = a["sample_id"].combine_chunks()
        a_vals = np.column_stack([a.column(c).to_numpy(zero_copy_only=False).astype(np.float32) for c in au_cols])
        del a
    want = ["crop_png"] + (["quality_flags"] if "quality_flags" in faces else [])
    for t in iter_primary_faces(store, want, batch_size=batch_size):
        t = t.filter(pc.is_valid(t["crop_png"]))
        li = pc.index_in(t["sample_id"], value_set=s_ids)
        keep = pc.is_valid(li)
        t, li = t.filter(keep), li.filter(keep)
        if not t.num_rows:
            continue
        ids = t["sample_id"].to_pylist()
        au = None
        if au_cols:
            ai = pc.index_in(t["sample_id"], value_set=a_ids).to_numpy(zero_copy_only=False)
            au = np.full((len(ids), len(au_cols)), np.nan)
            has = ~np.isnan(ai)
            au[has] = a_vals[ai[has].astype(np.int64)]
        flags = t["quality_flags"].to_pylist() if "quality_flags" in faces else [None] * len(ids)
        yield ScoreBatch(ids, s_labels.take(li).to_pylist(), t["crop_png"].to_pylist(), [list(f or []) for f in flags],
                         au)


def _to_batch(t: pa.Table, au_cols: list[str] | None) -> ScoreBatch:
    au = None
    if au_cols:
        au = np.column_stack([t.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in au_cols])
    return ScoreBatch(t.column("sample_id").to_pylist(), t.column("label_original").to_pylist(),
                      t.column("crop_png").to_pylist(), [list(f or []) for f in t.column("quality_flags").to_pylist()],
                      au)


def _small_tables(store: Any, collection: str | None, au_cols: list[str] | None, batch_size: int) -> Iterator[ScoreBatch]:
    """The same rows from whole-table reads (tables without is_primary / face_index: hand-made, small)."""
    s = store.read("samples")
    if collection is not None and "collection" in s.column_names:
        s = s.filter(pc.equal(s["collection"], collection))
    labels = dict(zip(s["sample_id"].to_pylist(), s["label_original"].to_pylist(), strict=True))
    cols = ["crop_png"] + (["quality_flags"] if "quality_flags" in _schema_names(store, "faces") else [])
    f = primary_faces(store, cols)
    rows = [(sid, png, (fl if "quality_flags" in cols else None))
            for sid, png, fl in zip(f["sample_id"].to_pylist(), f["crop_png"].to_pylist(),
                                    f["quality_flags"].to_pylist() if "quality_flags" in cols else [None] * f.num_rows,
                                    strict=True)
            if png is not None and sid in labels]
    au_map: dict[str, np.ndarray] = {}
    if au_cols:
        a = primary_aus(store, au_cols)
        vals = np.column_stack([a.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in au_cols])
        au_map = dict(zip(a["sample_id"].to_pylist(), vals, strict=True))
    nan = np.full(len(au_cols or []), np.nan)
    for off in range(0, len(rows), batch_size):
        chunk = rows[off : off + batch_size]
        au = np.array([au_map.get(r[0], nan) for r in chunk]).reshape(len(chunk), -1) if au_cols else None
        yield ScoreBatch([r[0] for r in chunk], [labels[r[0]] for r in chunk], [r[1] for r in chunk],
                         [list(r[2] or []) for r in chunk], au)


def sample_filter(sample_ids: Sequence[str]) -> Any:
    """A dataset filter for these sample ids: a range test first (lets Parquet statistics skip the parts
    and row groups outside it, e.g. faces parts of other shards), then membership."""
    ids = sorted(sample_ids)
    f = pc.field("sample_id")
    return (f >= ids[0]) & (f <= ids[-1]) & f.isin(pa.array(ids, pa.string()))


def shard_score_batch(store: Any, sample_ids: Sequence[str], au_names: Sequence[str] | None) -> ScoreBatch:
    """The scoreable samples among `sample_ids` (a primary face with a crop) as one batch in sample_id order:
    what one score shard reads (the same rows :func:`iter_score_batches` gives for them)."""
    empty = ScoreBatch([], [], [], [], None)
    faces = _schema_names(store, "faces")
    if not sample_ids or not faces or "crop_png" not in faces:
        return empty
    where = sample_filter(sample_ids)
    s = store.read("samples", columns=["sample_id", "label_original"], filter=where)
    labels = dict(zip(s["sample_id"].to_pylist(), s["label_original"].to_pylist(), strict=True))
    cols = ["crop_png"] + (["quality_flags"] if "quality_flags" in faces else [])
    f = primary_faces(store, cols, where)
    f = f.filter(pc.is_valid(f["crop_png"]))
    f = f.filter(pc.is_in(f["sample_id"], value_set=pa.array(list(labels), pa.string()))).sort_by("sample_id")
    ids = f["sample_id"].to_pylist()
    au_cols = usable_au_columns(store, au_names) if au_names else None
    au = None
    if au_cols:
        a = primary_aus(store, au_cols, where)
        vals = np.column_stack([a.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in au_cols])
        pos = {sid: i for i, sid in enumerate(a["sample_id"].to_pylist())}
        au = np.full((len(ids), len(au_cols)), np.nan)
        for r, sid in enumerate(ids):
            if sid in pos:
                au[r] = vals[pos[sid]]
    flags = f["quality_flags"].to_pylist() if "quality_flags" in faces else [None] * len(ids)
    return ScoreBatch(ids, [labels[i] for i in ids], f["crop_png"].to_pylist(), [list(x or []) for x in flags], au)

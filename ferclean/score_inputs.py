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

from ferclean.primary import primary_aus, primary_faces


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
                       batch_size: int = 8192, memory_limit: str = "256MB") -> Iterator[ScoreBatch]:
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
    yield from _duckdb_batches(store, collection, au_cols, faces, samples, batch_size, memory_limit)


def _duckdb_batches(store: Any, collection: str | None, au_cols: list[str] | None, faces: list[str],
                    samples: list[str], batch_size: int, memory_limit: str) -> Iterator[ScoreBatch]:
    import duckdb

    flags = "f.quality_flags" if "quality_flags" in faces else "NULL::VARCHAR[]"
    au_select = "".join(f', CAST(a."{c}" AS DOUBLE) AS "{c}"' for c in au_cols or [])
    au_join = (f"LEFT JOIN read_parquet({_sql_list(store.part_files('aus'))}, union_by_name=true) a "
               "ON a.sample_id = f.sample_id AND a.face_index = f.face_index") if au_cols else ""
    where = "f.is_primary AND f.crop_png IS NOT NULL"
    params: list[Any] = []
    if collection is not None and "collection" in samples:
        where += " AND s.collection = ?"
        params.append(collection)
    query = (f"SELECT f.sample_id, s.label_original, f.crop_png, {flags} AS quality_flags{au_select} "
             f"FROM read_parquet({_sql_list(store.part_files('faces'))}, union_by_name=true) f "
             f"JOIN read_parquet({_sql_list(store.part_files('samples'))}, union_by_name=true) s "
             f"ON s.sample_id = f.sample_id {au_join} WHERE {where}")
    con = duckdb.connect()
    try:
        tmp = store.root / ".duckdb_tmp"
        con.execute(f"SET memory_limit = '{memory_limit}'")
        con.execute(f"SET temp_directory = '{tmp}'")
        con.execute("SET preserve_insertion_order = false")
        # keep the query's join order: faces (with the crops) is the streamed probe side, samples and aus are
        # the hash tables; DuckDB's optimiser would otherwise build on the filtered faces (all crops in memory)
        con.execute("SET disabled_optimizers = 'join_order'")
        con.execute("SET threads = 1")
        reader = con.sql(query, params=params or None).to_arrow_reader(batch_size)
        pending: list[pa.RecordBatch] = []
        n = 0
        for rb in reader:
            if not rb.num_rows:
                continue
            pending.append(rb)
            n += rb.num_rows
            while n >= batch_size:
                t = pa.Table.from_batches(pending)
                yield _to_batch(t.slice(0, batch_size), au_cols)
                rest = t.slice(batch_size)
                pending, n = rest.to_batches(), rest.num_rows
        if n:
            yield _to_batch(pa.Table.from_batches(pending), au_cols)
    finally:
        con.close()


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

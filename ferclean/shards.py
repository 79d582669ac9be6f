"""Deterministic shards for the image stages, with resume, increments and optional process-pool fan-out.

A stage reads its input table (normally `samples`) in shards of `shard_size` rows ordered by
`sample_id`. Each shard's key is a hash of the stage name, the stage config and the shard's
(sample_id, content_sha256) pairs, so:
- a part that already exists for a key is finished work (resume after a crash skips it);
- a change of config or of the images gives new keys (stale parts are removed at the end).

Increments (a folder that grows between nightly runs): the plan is kept in
`OUT/stages/<stage>.shards.parquet` (key, sample_id, content_sha256, config fingerprint). The next
plan with the same config keeps every earlier shard whose samples are all still there unchanged
(same key: nothing to compute); a shard that lost samples (deleted or replaced images) becomes a
*derived* shard whose part is the old part's rows of the remaining samples (a filter, no
recomputation); new and changed samples fill new shards. So adding 1 % of images computes about
1 % of them, whatever their sample ids, and deleted samples leave the stage's table.

The per-shard function is a module-level callable `fn(rows: pa.Table, config) -> pa.Table`, so it
can run in a worker process (ProcessPoolExecutor here; Dask via prefect-dask in the flows).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ferclean.memory import undo_low_trim_threshold
from ferclean.progress import make_progress, progress_enabled
from ferclean.store import Store


@dataclass(frozen=True, eq=False)
class Shard:
    """One unit of work: the rows of `table` whose sample_id is in `ids`.

    `ids` is an Arrow string array (about 30 bytes a sample), not a tuple of Python strings (about
    120 bytes a sample): a plan of 1 M samples is held in the flow process while its shards run,
    twice per image stage (the mapped shards and the stage function), and as Python objects that
    was ~0.8 GB retained and ~1.1 GB at its peak (docs/scaling.md). `sample_ids` gives the tuple.
    `derive_from`: the key of an earlier part that holds these samples' rows (among others); when
    that part exists, this shard's part is its filtered copy instead of a recomputation.
    """

    stage: str
    index: int
    key: str
    ids: pa.Array
    derive_from: str | None = None

    @property
    def sample_ids(self) -> tuple[str, ...]:
        return tuple(self.ids.to_pylist())

    @property
    def size(self) -> int:
        return len(self.ids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Shard):
            return NotImplemented
        return (self.stage, self.index, self.key, self.derive_from) == (
            other.stage, other.index, other.key, other.derive_from) and self.ids.equals(other.ids)

    def __hash__(self) -> int:
        return hash((self.stage, self.index, self.key))


def config_fingerprint(config: Any) -> str:
    """Stable hash of a JSON-able config (pydantic models and dataclasses via their dict)."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    elif hasattr(config, "__dataclass_fields__"):
        from dataclasses import asdict

        config = asdict(config)
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def shard_key(stage: str, cfg: str, members: Iterable[tuple[str, str]], index: int) -> str:
    """The part key of a shard: a hash of stage, config fingerprint and (sample_id, sha) pairs."""
    h = hashlib.sha256(f"{stage}|{cfg}".encode())
    for a, b in members:
        h.update(f"{a}\0{b}\n".encode())
    return f"{h.hexdigest()[:20]}-{index:05d}"


def _string(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One plain (not dictionary-encoded) string array of an Arrow column."""
    if isinstance(values, pa.ChunkedArray):
        values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    return values.cast(pa.string()) if pa.types.is_dictionary(values.type) else values


def _key_of(stage: str, cfg: str, ids: pa.Array, shas: pa.Array, index: int) -> str:
    return shard_key(stage, cfg, zip(ids.to_pylist(), shas.to_pylist(), strict=True), index)


def plan_from_tables(stage: str, cfg: str, current: pa.Table, previous: pa.Table | None, shard_size: int) -> list[Shard]:
    """The planning rule on Arrow columns (what :func:`incremental_plan` states on Python pairs).

    `current`: columns sample_id, content_sha256 (no nulls), sorted by sample_id, unique ids;
    `previous`: the earlier plan with the same config (columns key, sample_id, content_sha256; rows
    of one shard in its order) or None. Earlier shards whose members are all current (same sha) are
    kept as they are; those that lost members become derived shards of the rest; the samples no
    kept shard covers fill new shards of `shard_size`, in sample_id order. Memory: the columns plus
    one shard's Python strings at a time (for its key).
    """
    cur_ids = _string(current.column("sample_id"))
    cur_sha = _string(current.column("content_sha256"))
    shards: list[Shard] = []
    covered: list[pa.Array] = []
    if previous is not None and previous.num_rows:
        enc = pc.dictionary_encode(_string(previous.column("key")))  # codes in order of first appearance
        codes = enc.indices.to_numpy(zero_copy_only=False)
        p_ids, p_sha = _string(previous.column("sample_id")), _string(previous.column("content_sha256"))
        if len(codes) > 1 and (np.diff(codes) < 0).any():  # a shard's rows apart: put them together
            order = np.argsort(codes, kind="stable")
            codes = codes[order]
            p_ids, p_sha = p_ids.take(pa.array(order)), p_sha.take(pa.array(order))
        alive = pc.fill_null(pc.equal(cur_sha.take(pc.index_in(p_ids, value_set=cur_ids)), p_sha), False)
        alive = alive.to_numpy(zero_copy_only=False)
        bounds = [0, *(np.flatnonzero(np.diff(codes)) + 1).tolist(), len(codes)]
        keys = enc.dictionary.to_pylist()
        for s, e in itertools.pairwise(bounds):
            live = alive[s:e]
            n_alive = int(live.sum())
            if n_alive == 0:
                continue
            mask = pa.array(live)
            ids = p_ids.slice(s, e - s).filter(mask)
            key = keys[codes[s]]
            if n_alive == e - s:
                shards.append(Shard(stage, len(shards), key, ids))
            else:
                k = _key_of(stage, cfg, ids, p_sha.slice(s, e - s).filter(mask), len(shards))
                shards.append(Shard(stage, len(shards), k, ids, derive_from=key))
            covered.append(ids)
    if covered:
        rest = pc.invert(pc.is_in(cur_ids, value_set=pa.concat_arrays(covered)))
        r_ids, r_sha = cur_ids.filter(rest), cur_sha.filter(rest)
    else:
        r_ids, r_sha = cur_ids, cur_sha
    for start in range(0, len(r_ids), shard_size):
        take = pa.array(np.arange(start, min(start + shard_size, len(r_ids)), dtype=np.int64))
        ids, shas = r_ids.take(take), r_sha.take(take)
        shards.append(Shard(stage, len(shards), _key_of(stage, cfg, ids, shas, len(shards)), ids))
    return shards


def incremental_plan(
    stage: str,
    cfg: str,
    current: Sequence[tuple[str, str]],
    previous: Sequence[tuple[str, Sequence[tuple[str, str]]]],
    shard_size: int,
) -> list[Shard]:
    """Pure planning rule on Python pairs (see :func:`plan_from_tables`, which it calls). `current`:
    (sample_id, sha) pairs sorted by sample_id; `previous`: the earlier plan as (key, members) with
    the same config."""
    cur = pa.table({"sample_id": pa.array([a for a, _ in current], pa.string()),
                    "content_sha256": pa.array([b for _, b in current], pa.string())})
    prev = pa.table({"key": pa.array([k for k, m in previous for _ in m], pa.string()),
                     "sample_id": pa.array([a for _, m in previous for a, _ in m], pa.string()),
                     "content_sha256": pa.array([b for _, m in previous for _, b in m], pa.string())})
    return plan_from_tables(stage, cfg, cur, prev, shard_size)


def plan_path(store: Store, stage: str) -> Path:
    """Where the stage's last shard plan is kept."""
    return store.root / "stages" / f"{stage}.shards.parquet"


def read_plan(store: Store, stage: str, cfg: str) -> pa.Table | None:
    """The stage's previous plan for this config (columns key, sample_id, content_sha256), or None."""
    path = plan_path(store, stage)
    if not path.is_file():
        return None
    t = pq.read_table(path, columns=["key", "sample_id", "content_sha256", "config"], use_threads=False)
    conf = t.column("config")
    if not all(pa.types.is_dictionary(conf.type) and x.dictionary.to_pylist() == [cfg] for x in conf.chunks):
        t = t.filter(pc.equal(conf.cast(pa.string()), cfg))  # a plan of another config, or the older format
    return t.drop_columns(["config"])


def write_plan(store: Store, stage: str, cfg: str, shards: Sequence[Shard], current: pa.Table) -> None:
    """Keep `shards` as the stage's plan (atomically); `current` gives each sample's sha. Key and
    config are dictionary-encoded (4 bytes a row in memory)."""
    sizes = np.array([s.size for s in shards], dtype=np.int64)
    sids = pa.concat_arrays([s.ids for s in shards]) if shards else pa.array([], pa.string())
    idx = pc.index_in(sids, value_set=_string(current.column("sample_id")))
    sha = _string(current.column("content_sha256")).take(idx)
    key = pa.DictionaryArray.from_arrays(pa.array(np.repeat(np.arange(len(shards), dtype=np.int32), sizes)),
                                         pa.array([s.key for s in shards], pa.string()))
    config = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(sids), np.int32)), pa.array([cfg], pa.string()))
    t = pa.table({"key": key, "sample_id": sids, "content_sha256": sha, "config": config})
    path = plan_path(store, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    pq.write_table(t, tmp)
    os.replace(tmp, path)


def _read_by_part(store: Store, table: str, columns: list[str], where: ds.Expression | None = None) -> pa.Table:
    """Some columns of a whole table, read one part file at a time (a dataset scan's read-ahead and
    thread pool held ~0.4 GB more than the 90 MB result for 1 M sample ids and shas)."""
    chunks = [pq.read_table(f, columns=columns, filters=where, use_threads=False, pre_buffer=False)
              for f in store.part_files(table)]
    if not chunks:
        from ferclean.contracts import load_contract

        return load_contract(table).empty().select(columns)
    return pa.concat_tables(chunks, promote_options="permissive")


def _sorted_unique(t: pa.Table) -> pa.Table:
    """`t` sorted by sample_id, keeping the first row of each sample_id (an Acero group_by + join of
    1 M string keys peaked ~0.45 GB above its inputs; this copies only when `t` is not already
    strictly increasing)."""
    n = t.num_rows
    if n > 1 and not pc.all(pc.greater(t.column("sample_id").slice(1), t.column("sample_id").slice(0, n - 1))).as_py():
        t = t.take(pc.sort_indices(t.column("sample_id")))
        ids = t.column("sample_id")
        t = t.filter(pa.chunked_array([pa.array([True]), *pc.not_equal(ids.slice(1), ids.slice(0, n - 1)).chunks]))
    return t.combine_chunks()


def _content(t: pa.Table, content_columns: Sequence[str]) -> pa.Array:
    """The content string of each row of `t`: its image hash, joined with `content_columns`' values."""
    if not content_columns:
        return _string(t.column("content_sha256"))
    vals = [pc.fill_null(pc.cast(t.column(c), pa.string()), "\x00") for c in ("content_sha256", *content_columns)]
    return _string(pc.binary_join_element_wise(*vals, "|"))


def current_samples(store: Store, table: str = "samples", where: ds.Expression | None = None,
                    content_columns: Sequence[str] = ()) -> pa.Table:
    """(sample_id, content_sha256) of the distinct sample ids of `table`, sorted by sample_id; a
    sample's content is its image's hash (also for a stage reading another table, e.g. aus over
    faces: a replaced image must be recomputed there too), with `content_columns` of `samples`
    joined to it; "" when `samples` lacks the id."""
    cols = ["sample_id", "content_sha256", *content_columns]
    if table == "samples":
        t = _sorted_unique(_read_by_part(store, "samples", cols, where))
        sha = _content(t, content_columns)
        return pa.table({"sample_id": _string(t.column("sample_id")),
                         "content_sha256": pc.fill_null(sha, "") if sha.null_count else sha})
    ids = _string(_sorted_unique(_read_by_part(store, table, ["sample_id"], where)).column("sample_id"))
    sha = _read_by_part(store, "samples", cols)
    idx = pc.index_in(ids, value_set=_string(sha.column("sample_id")))
    return pa.table({"sample_id": ids,
                     "content_sha256": pc.fill_null(_content(sha, content_columns).take(idx), "")})


def plan_shards(
    store: Store,
    stage: str,
    config: Any,
    shard_size: int = 2048,
    table: str = "samples",
    where: ds.Expression | None = None,
    content_columns: Sequence[str] = (),
) -> list[Shard]:
    """Split `table` (sorted by sample_id) into content+config keyed shards, keeping the earlier
    plan's shards where their samples are unchanged (see :func:`plan_from_tables`). The sample ids
    and shas stay Arrow columns (no per-sample Python objects). `content_columns`: further `samples`
    columns that count as a sample's content (e.g. the given label, for a stage whose output depends on it)."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    current = current_samples(store, table, where, content_columns)
    cfg = config_fingerprint(config)
    shards = plan_from_tables(stage, cfg, current, read_plan(store, stage, cfg), shard_size)
    write_plan(store, stage, cfg, shards, current)
    return shards


_DATASETS: dict[tuple, ds.Dataset] = {}


def _table_dataset(store: Store, table: str) -> ds.Dataset | None:
    """The dataset of `table`'s parts, kept per process while its part files (names, sizes, mtimes) stay
    the same: its fragments keep their Parquet footers once read, so each shard's range filter skips the
    other parts without opening them again (reading every footer per shard cost ~1 s at 1 M faces)."""
    files = store.part_files(table)
    if not files:
        return None
    stats = [f.stat() for f in files]
    key = (str(store.table_dir(table)), tuple((f.name, st.st_size, st.st_mtime_ns) for f, st in zip(files, stats,
                                                                                                  strict=True)))
    dset = _DATASETS.get(key)
    if dset is None:
        dset = store.dataset(table)
        while len(_DATASETS) >= 4:
            _DATASETS.pop(next(iter(_DATASETS)))
        _DATASETS[key] = dset
    return dset


def load_rows(store: Store, shard: Shard, table: str = "samples", columns: Sequence[str] | None = None) -> pa.Table:
    """The rows of `table` belonging to `shard`, in sample_id order. The filter carries the shard's
    id range, so Parquet statistics skip the parts and row groups outside it (without it every shard
    scanned the whole table: at 1 M faces 2.2 s a shard, 123 aus shards)."""
    dset = _table_dataset(store, table)
    if dset is None or shard.size == 0:
        return store.read(table, columns=columns, filter=pc.field("sample_id").isin(shard.ids))
    lo, hi = pc.min_max(shard.ids).values()
    fld = pc.field("sample_id")
    flt = (fld >= lo.as_py()) & (fld <= hi.as_py()) & fld.isin(shard.ids)
    return dset.to_table(columns=list(columns) if columns else None, filter=flt).sort_by("sample_id")


ShardFn = Callable[[Store, Shard, Any], pa.Table]


class WorkerDied(RuntimeError):
    """A shard worker process died (killed or crashed in native code) more often than allowed."""


def process_shard(store: Store, shard: Shard, out_table: str, fn: ShardFn, config: Any) -> tuple[str, int]:
    """Run `fn` on one shard and write its part (skipped when the part exists; a derived shard
    whose earlier part exists is filtered from it). Returns (key, rows)."""
    if store.has_part(out_table, shard.key):
        return shard.key, -1
    undo_low_trim_threshold()  # on a Dask worker: glibc's usual thresholds for torch's buffers (ferclean.memory)
    if shard.derive_from and store.has_part(out_table, shard.derive_from):
        old = pq.read_table(store.part_path(out_table, shard.derive_from))
        result = old.filter(pc.is_in(old.column("sample_id"), shard.ids))
    else:
        result = fn(store, shard, config)
    store.write_part(out_table, shard.key, result)
    return shard.key, result.num_rows


def run_sharded(
    store: Store,
    shards: Sequence[Shard],
    out_table: str,
    fn: ShardFn,
    config: Any,
    workers: int = 1,
    description: str = "",
    progress: bool = True,
    worker_retries: int = 2,
) -> dict[str, int]:
    """Process every shard (resuming), then drop stale parts of `out_table`.

    With `workers` > 1 the shards run in a process pool; when a worker process dies, the
    unfinished shards are retried in a fresh pool up to `worker_retries` times, then
    :class:`WorkerDied` is raised (the stage, and the run, fail with that message).

    Returns {"shards": n, "skipped": n already done, "rows": rows written now}.
    """
    summary = {"shards": len(shards), "skipped": 0, "rows": 0}
    todo = [s for s in shards if not store.has_part(out_table, s.key)]
    summary["skipped"] = len(shards) - len(todo)
    show = progress_enabled(progress)
    bar = make_progress() if show else None
    task = bar.add_task(description or out_table, total=len(shards), completed=summary["skipped"]) if bar else None
    if bar:
        bar.start()
    try:
        if workers <= 1 or len(todo) <= 1:
            for s in todo:
                _, n = process_shard(store, s, out_table, fn, config)
                summary["rows"] += max(n, 0)
                if bar:
                    bar.advance(task)
        else:
            for attempt in range(worker_retries + 1):
                pending = [s for s in todo if not store.has_part(out_table, s.key)]
                try:
                    with ProcessPoolExecutor(max_workers=workers) as pool:
                        futs = [pool.submit(process_shard, store, s, out_table, fn, config) for s in pending]
                        for f in as_completed(futs):
                            _, n = f.result()
                            summary["rows"] += max(n, 0)
                            if bar:
                                bar.advance(task)
                    break
                except BrokenProcessPool as exc:
                    # A worker was killed or crashed in native code: finished shards keep their parts;
                    # the unfinished ones go to a fresh pool, and after the retries the stage fails.
                    if attempt == worker_retries:
                        left = sum(not store.has_part(out_table, s.key) for s in todo)
                        raise WorkerDied(
                            f"{description or out_table}: a worker process died {attempt + 1} times (killed, out of "
                            f"memory, or a crash in native code); {left} of {len(shards)} shards unfinished. "
                            "Finished shards are kept: a rerun resumes at the unfinished ones") from exc
    finally:
        if bar:
            bar.stop()
    store.keep_only(out_table, [s.key for s in shards])
    return summary

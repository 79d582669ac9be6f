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
import json
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ferclean.progress import make_progress, progress_enabled
from ferclean.store import Store


@dataclass(frozen=True)
class Shard:
    """One unit of work: the rows of `table` whose sample_id is in `sample_ids`.

    `derive_from`: the key of an earlier part that holds these samples' rows (among others); when
    that part exists, this shard's part is its filtered copy instead of a recomputation.
    """

    stage: str
    index: int
    key: str
    sample_ids: tuple[str, ...]
    derive_from: str | None = None


def config_fingerprint(config: Any) -> str:
    """Stable hash of a JSON-able config (pydantic models and dataclasses via their dict)."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    elif hasattr(config, "__dataclass_fields__"):
        from dataclasses import asdict

        config = asdict(config)
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def shard_key(stage: str, cfg: str, members: Sequence[tuple[str, str]], index: int) -> str:
    """The part key of a shard: a hash of stage, config fingerprint and (sample_id, sha) pairs."""
    h = hashlib.sha256(f"{stage}|{cfg}".encode())
    for a, b in members:
        h.update(f"{a}\0{b}\n".encode())
    return f"{h.hexdigest()[:20]}-{index:05d}"


def incremental_plan(
    stage: str,
    cfg: str,
    current: Sequence[tuple[str, str]],
    previous: Sequence[tuple[str, Sequence[tuple[str, str]]]],
    shard_size: int,
) -> list[Shard]:
    """Pure planning rule. `current`: (sample_id, sha) pairs sorted by sample_id; `previous`: the
    earlier plan as (key, members) with the same config. Earlier shards whose members are all
    current are kept as they are; those that lost members become derived shards of the rest;
    the samples no kept shard covers fill new shards of `shard_size`, in sample_id order."""
    now = dict(current)
    shards: list[Shard] = []
    covered: set[str] = set()
    for key, members in previous:
        alive = [(a, b) for a, b in members if now.get(a) == b]
        if not alive:
            continue
        ids = tuple(a for a, _ in alive)
        covered.update(ids)
        if len(alive) == len(members):
            shards.append(Shard(stage, len(shards), key, ids))
        else:
            shards.append(Shard(stage, len(shards), shard_key(stage, cfg, alive, len(shards)), ids, derive_from=key))
    rest = [(a, b) for a, b in current if a not in covered]
    for start in range(0, len(rest), shard_size):
        chunk = rest[start : start + shard_size]
        shards.append(Shard(stage, len(shards), shard_key(stage, cfg, chunk, len(shards)), tuple(a for a, _ in chunk)))
    return shards


def plan_path(store: Store, stage: str) -> Path:
    """Where the stage's last shard plan is kept."""
    return store.root / "stages" / f"{stage}.shards.parquet"


def read_plan(store: Store, stage: str, cfg: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """The stage's previous plan as (key, members), or [] when there is none for this config."""
    path = plan_path(store, stage)
    if not path.is_file():
        return []
    t = pq.read_table(path, filters=[("config", "==", cfg)])
    out: dict[str, list[tuple[str, str]]] = {}
    for key, sid, sha in zip(t.column("key").to_pylist(), t.column("sample_id").to_pylist(),
                             t.column("content_sha256").to_pylist(), strict=True):
        out.setdefault(key, []).append((sid, sha))
    return list(out.items())


def write_plan(store: Store, stage: str, cfg: str, shards: Sequence[Shard], sha: dict[str, str]) -> None:
    """Keep `shards` as the stage's plan (atomically)."""
    keys, sids = [], []
    for s in shards:
        keys += [s.key] * len(s.sample_ids)
        sids += list(s.sample_ids)
    t = pa.table({"key": pa.array(keys, pa.string()), "sample_id": pa.array(sids, pa.string()),
                  "content_sha256": pa.array([sha[x] for x in sids], pa.string()),
                  "config": pa.array([cfg] * len(sids), pa.string())})
    path = plan_path(store, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    pq.write_table(t, tmp)
    os.replace(tmp, path)


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
    plan's shards where their samples are unchanged (see :func:`incremental_plan`).
    `content_columns`: further `samples` columns that count as a sample's content (e.g. the given label,
    for a stage whose output depends on it)."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    ids = store.read(table, columns=["sample_id"], filter=where).group_by(["sample_id"]).aggregate([])
    # A sample's content is its image's hash (also for a stage reading another table, e.g. aus
    # over faces: a replaced image must be recomputed there too).
    sha = store.read("samples", columns=["sample_id", "content_sha256", *content_columns])
    if content_columns:
        vals = [pc.fill_null(pc.cast(sha[c], pa.string()), "\x00") for c in ("content_sha256", *content_columns)]
        sha = pa.table({"sample_id": sha["sample_id"], "content_sha256": pc.binary_join_element_wise(*vals, "|")})
    ids = ids.join(sha, "sample_id", join_type="left outer").sort_by("sample_id")
    current = list(zip(ids.column("sample_id").to_pylist(),
                       pc.fill_null(ids.column("content_sha256"), "").to_pylist(), strict=True))
    cfg = config_fingerprint(config)
    shards = incremental_plan(stage, cfg, current, read_plan(store, stage, cfg), shard_size)
    write_plan(store, stage, cfg, shards, dict(current))
    return shards


def load_rows(store: Store, shard: Shard, table: str = "samples", columns: Sequence[str] | None = None) -> pa.Table:
    """The rows of `table` belonging to `shard`, in sample_id order."""
    flt = pc.field("sample_id").isin(pa.array(shard.sample_ids, pa.string()))
    return store.read(table, columns=columns, filter=flt).sort_by("sample_id")


ShardFn = Callable[[Store, Shard, Any], pa.Table]


class WorkerDied(RuntimeError):
    """A shard worker process died (killed or crashed in native code) more often than allowed."""


def process_shard(store: Store, shard: Shard, out_table: str, fn: ShardFn, config: Any) -> tuple[str, int]:
    """Run `fn` on one shard and write its part (skipped when the part exists; a derived shard
    whose earlier part exists is filtered from it). Returns (key, rows)."""
    if store.has_part(out_table, shard.key):
        return shard.key, -1
    if shard.derive_from and store.has_part(out_table, shard.derive_from):
        old = pq.read_table(store.part_path(out_table, shard.derive_from))
        result = old.filter(pc.is_in(old.column("sample_id"), pa.array(shard.sample_ids, pa.string())))
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

"""Deterministic shards for the image stages, with resume and optional process-pool fan-out.

A stage reads its input table (normally `samples`) in shards of `shard_size` rows ordered by
`sample_id`. Each shard's key is a hash of the stage name, the stage config and the shard's
(sample_id, content_sha256) pairs, so:
- a part that already exists for a key is finished work (resume after a crash skips it);
- a change of config or of the images gives new keys (stale parts are removed at the end).

The per-shard function is a module-level callable `fn(rows: pa.Table, config) -> pa.Table`, so it
can run in a worker process (ProcessPoolExecutor here; Dask via prefect-dask in the flows).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ferclean.progress import make_progress, progress_enabled
from ferclean.store import Store


@dataclass(frozen=True)
class Shard:
    """One unit of work: the rows of `table` whose sample_id is in `sample_ids`."""

    stage: str
    index: int
    key: str
    sample_ids: tuple[str, ...]


def config_fingerprint(config: Any) -> str:
    """Stable hash of a JSON-able config (pydantic models and dataclasses via their dict)."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    elif hasattr(config, "__dataclass_fields__"):
        from dataclasses import asdict

        config = asdict(config)
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def plan_shards(
    store: Store,
    stage: str,
    config: Any,
    shard_size: int = 2048,
    table: str = "samples",
    where: ds.Expression | None = None,
) -> list[Shard]:
    """Split `table` (sorted by sample_id) into shards with content+config keyed names."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    cols = ["sample_id", "content_sha256"] if table == "samples" else ["sample_id"]
    ids = store.read(table, columns=cols, filter=where)
    if "content_sha256" not in ids.column_names:
        ids = ids.append_column("content_sha256", pa.array([""] * ids.num_rows, pa.string()))
    ids = ids.group_by(["sample_id"]).aggregate([("content_sha256", "min")])
    ids = ids.sort_by("sample_id")
    sid = ids.column("sample_id").to_pylist()
    sha = ids.column("content_sha256_min").to_pylist()
    cfg = config_fingerprint(config)
    shards = []
    for i, start in enumerate(range(0, len(sid), shard_size)):
        h = hashlib.sha256(f"{stage}|{cfg}".encode())
        for a, b in zip(sid[start : start + shard_size], sha[start : start + shard_size], strict=True):
            h.update(f"{a}\0{b}\n".encode())
        shards.append(Shard(stage, i, f"{h.hexdigest()[:20]}-{i:05d}", tuple(sid[start : start + shard_size])))
    return shards


def load_rows(store: Store, shard: Shard, table: str = "samples", columns: Sequence[str] | None = None) -> pa.Table:
    """The rows of `table` belonging to `shard`, in sample_id order."""
    flt = pc.field("sample_id").isin(pa.array(shard.sample_ids, pa.string()))
    return store.read(table, columns=columns, filter=flt).sort_by("sample_id")


ShardFn = Callable[[Store, Shard, Any], pa.Table]


def process_shard(store: Store, shard: Shard, out_table: str, fn: ShardFn, config: Any) -> tuple[str, int]:
    """Run `fn` on one shard and write its part (skipped when the part exists). Returns (key, rows)."""
    if store.has_part(out_table, shard.key):
        return shard.key, -1
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
) -> dict[str, int]:
    """Process every shard (resuming), then drop stale parts of `out_table`.

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
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futs = [pool.submit(process_shard, store, s, out_table, fn, config) for s in todo]
                for f in as_completed(futs):
                    _, n = f.result()
                    summary["rows"] += max(n, 0)
                    if bar:
                        bar.advance(task)
    finally:
        if bar:
            bar.stop()
    store.keep_only(out_table, [s.key for s in shards])
    return summary

"""The ingest stage: stream a source into the `samples` table (and `rejects`)."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from ferclean.classes import normalize_label
from ferclean.ingest.checks import ItemRejected, inspect_bytes, read_file
from ferclean.ingest.config import IngestConfig
from ferclean.ingest.stop import stop_message
from ferclean.ingest.sources import (
    FERPLUS_COLUMNS,
    Item,
    SourceError,
    TooManyRejects,
    iter_fer2013_csv,
    iter_folder,
    iter_manifest,
    manifest_extra_types,
    read_ferplus_votes,
    sniff_columns,
)
from ferclean.progress import track
from ferclean.runs import Run
from ferclean.shards import config_fingerprint
from ferclean.store import Store

_ARROW = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "string": pa.string()}


def detect_format(source: Path) -> str:
    """folder for a directory; fer2013-csv for a CSV with a `pixels` column; else manifest."""
    if source.is_dir():
        return "folder"
    if not source.is_file():
        raise SourceError(f"source {source} does not exist")
    cols = {c.lower() for c in sniff_columns(source)}
    return "fer2013-csv" if "pixels" in cols and "emotion" in cols else "manifest"


def default_collection(source: Path, fmt: str) -> str:
    if fmt == "folder":
        return source.name
    if fmt == "manifest":
        return source.parent.name or source.stem
    return source.stem


def _items(cfg: IngestConfig, store: Store, fmt: str, source: Path) -> tuple[Any, dict[str, pa.DataType]]:
    """The item iterator and the Arrow types of the extra columns."""
    if fmt == "folder":
        if not source.is_dir():
            raise SourceError(f"{source} is not a directory")
        return iter_folder(source, cfg.classes, cfg.unlabelled), {}
    if fmt == "manifest":
        root = Path(cfg.root).expanduser().resolve() if cfg.root else source.parent.resolve()
        if not root.is_dir():
            raise SourceError(f"manifest root {root} is not a directory")
        kinds = manifest_extra_types(source)
        return iter_manifest(source, root), {c: _ARROW[k] for c, k in kinds.items()}
    votes = read_ferplus_votes(Path(cfg.labels).expanduser()) if cfg.labels else None
    media = store.root / "media" / (cfg.collection or source.stem)
    types = {c: pa.int64() for c in FERPLUS_COLUMNS} if votes is not None else {}
    return iter_fer2013_csv(source, media, votes), types


def _row(item: Item, cfg: IngestConfig, collection: str, run_id: str) -> dict[str, Any]:
    """Check one item and build its samples row; raise ItemRejected when it is unusable."""
    if item.error is not None:
        raise item.error
    assert item.path is not None
    data = item.data if item.data is not None else read_file(item.path)
    info = inspect_bytes(data, cfg.max_pixels)
    try:
        label = normalize_label(item.label_raw, cfg.classes)
    except ValueError as exc:
        raise ItemRejected("unknown_label", str(exc)) from None
    split = item.split or ("unlabelled" if label is None and cfg.unlabelled else cfg.default_split)
    return {
        "sample_id": item.sample_id,
        "source_path": str(item.path),
        "content_sha256": info.sha256,
        "split": split,
        "label_original": label,
        "label_raw": None if item.label_raw is None else str(item.label_raw),
        "collection": collection,
        "width": info.width,
        "height": info.height,
        "channels": info.channels,
        "source_row": item.source_row,
        "run_id": run_id,
        **item.extras,
    }


def _table(rows: list[dict[str, Any]], extra_types: dict[str, pa.DataType]) -> pa.Table:
    base = {
        "sample_id": pa.string(), "source_path": pa.string(), "content_sha256": pa.string(),
        "split": pa.string(), "label_original": pa.string(), "label_raw": pa.string(),
        "collection": pa.string(), "width": pa.int32(), "height": pa.int32(), "channels": pa.int8(),
        "source_row": pa.int64(), "run_id": pa.string(),
    }
    schema = pa.schema([*base.items(), *extra_types.items()])
    return pa.Table.from_pylist(rows, schema=schema)


def run_ingest(store: Store, run: Run, config: IngestConfig, progress: bool = True) -> dict[str, Any]:
    """Read `config.source` into `samples`, rejecting unusable items with a reason.

    Streams: at most `shard_size` rows are held in memory. For every input item exactly one row
    lands in `samples` or in `rejects` (stage 'ingest'). Returns counts for the run summary.
    Raises SourceError when the source as a whole is unusable.
    """
    source = Path(config.source).expanduser().resolve()
    if not source.exists():
        raise SourceError(f"source {config.source} does not exist")
    fmt = detect_format(source) if config.format == "auto" else config.format
    if fmt == "fer2013-csv" and config.labels is None:
        pass  # votes are optional
    if config.labels and fmt != "fer2013-csv":
        raise SourceError("--labels (a FER+ vote file) only applies to a FER2013 pixel CSV")
    collection = config.collection or default_collection(source, fmt)
    items, extra_types = _items(config, store, fmt, source)
    key_prefix = config_fingerprint({"cfg": config.model_dump(mode="json"), "run": run.run_id})[:12]

    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    keys: list[str] = []
    reasons: Counter[str] = Counter()
    examples: dict[str, str] = {}
    n_in = n_ok = 0

    def flush() -> None:
        if rows:
            key = f"{key_prefix}-{len(keys):05d}"
            store.write_part("samples", key, _table(rows, extra_types))
            keys.append(key)
            rows.clear()

    for item in track(items, f"ingest {collection}", enabled=progress):
        if config.limit is not None and n_in >= config.limit:
            break
        n_in += 1
        try:
            row = _row(item, config, collection, run.run_id)
            if row["sample_id"] in seen:
                raise ItemRejected("duplicate_sample_id", f"sample_id {row['sample_id']!r} appeared earlier")
            seen.add(row["sample_id"])
        except ItemRejected as exc:
            reasons[exc.reason_code] += 1
            examples.setdefault(exc.reason_code, f"{item.source_ref}: {exc.message}")
            run.reject(item.source_ref, "ingest", exc.reason_code, exc.message)
            continue
        rows.append(row)
        n_ok += 1
        if len(rows) >= config.shard_size:
            flush()
    flush()
    run.flush_rejects()
    run.counts["ingest.input_rows"] += n_in
    run.counts["samples"] += n_ok
    stop = stop_message(n_in, n_ok, reasons, examples, config.max_reject_share)
    if stop:
        # Nothing half-written: this run's parts go, the previous samples table stays as it was.
        for key in keys:
            store.part_path("samples", key).unlink(missing_ok=True)
        raise TooManyRejects(stop)
    store.keep_only("samples", keys)
    digest = hashlib.sha256("".join(sorted(keys)).encode()).hexdigest()[:12]
    return {"format": fmt, "collection": collection, "input_rows": n_in, "samples": n_ok,
            "rejects": sum(reasons.values()), "rejects_by_reason": dict(reasons), "parts": len(keys),
            "digest": digest}

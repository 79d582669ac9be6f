"""The stage cache: whether a stage can be skipped, and running it when it cannot.

After a stage completes, `OUT/stages/<stage>.json` (a :class:`StageManifest`) records:

- `input_fingerprint`: a hash over the stage's input tables' part files (name, size, mtime in
  ns) - and, for ingest, over the source manifest and the files in its folder;
- `config_hash`: :func:`ferclean.shards.config_fingerprint` of the stage config;
- `code_version`: ferclean's version plus a hash of every ferclean module the stage reaches;
- `output_fingerprint`: the same hash over the stage's output tables/folders;
- the stage's summary dict, the run id that computed it, and timestamps.

A later run skips the stage when all four still match (outputs unchanged since they were
written, so nobody deleted or edited them). Part keys of the image stages are content+config
hashes, so an interrupted image stage also resumes per shard (see :mod:`ferclean.shards`).
:class:`StageCache` is the one object the flows use: `StageCache(store).run(run, spec, config)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import ferclean
from ferclean.code_graph import ROOT, ferclean_graph, module_files, reachable
from ferclean.shards import config_fingerprint
from ferclean.stage_spec import StageSpec
from ferclean.store import Store


def config_dump(config: BaseModel | None) -> dict[str, Any] | None:
    return None if config is None else config.model_dump(mode="json")


# -- fingerprints ------------------------------------------------------------------------------
def _stat_lines(files: Iterable[Path], root: Path) -> Iterable[str]:
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:
            continue
        yield f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n"


def folder_fingerprint(folder: str | os.PathLike[str]) -> str:
    """Hash of every file under `folder` (relative path, size, mtime); stable for an absent folder."""
    root = Path(folder).expanduser().resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
    return hashlib.sha256(f"{root}\n{''.join(_stat_lines(files, root))}".encode()).hexdigest()


def path_fingerprint(store: Store, names: Sequence[str]) -> str:
    """Hash of the part files of tables (or files under `OUT/<folder>/`) by name, size, mtime.

    Parts are replaced atomically and named by content+config, so this changes whenever a
    table's content could have changed; reading no data keeps it cheap (one stat per file).
    """
    h = hashlib.sha256()
    for name in names:
        h.update(f"[{name}]\n".encode())
        if name.endswith("/"):
            folder = store.root / name
            files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
            h.update("".join(_stat_lines(files, store.root)).encode())
        else:
            h.update("".join(_stat_lines(store.part_files(name), store.root)).encode())
    return h.hexdigest()


def source_fingerprint(source: str | os.PathLike[str]) -> str:
    """Hash of an ingest source: the file itself and every file in its folder (path, size, mtime).

    For a manifest (CSV/Parquet) the folder it sits in is where its image paths resolve; for a
    folder source it is the folder. Cost: one stat per file (about 1 s per 100k files).
    """
    src = Path(source).expanduser().resolve()
    root = src.parent if src.is_file() else src
    h = hashlib.sha256(f"{src}\n".encode())
    if src.is_file():
        h.update("".join(_stat_lines([src], root)).encode())
    if root.exists():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            d = Path(dirpath)
            h.update("".join(_stat_lines((d / f for f in sorted(filenames)), root)).encode())
    return h.hexdigest()


def code_version(spec: StageSpec) -> str:
    """ferclean's version plus a hash of the source of every ferclean module the stage function's module
    reaches through its imports (imports inside functions count: ferclean.code_graph), so an edit to
    anything the stage runs (e.g. ferclean.noise for relabel) recomputes it."""
    files = module_files(ROOT, ("ferclean",))
    h = hashlib.sha256()
    for mod in reachable(spec.run.__module__, ferclean_graph()):
        f = files.get(mod) or Path(sys.modules[mod].__file__ or "")  # a stage defined outside ferclean
        h.update(f"{mod}\n".encode())
        h.update(f.read_bytes())
    return f"{ferclean.__version__}+{h.hexdigest()[:16]}"


# -- manifests ---------------------------------------------------------------------------------
@dataclass
class StageManifest:
    """What `OUT/stages/<stage>.json` records about the last completed run of a stage."""

    stage: str
    input_fingerprint: str
    config_hash: str
    code_version: str
    output_fingerprint: str = ""
    run_id: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""

    def key(self) -> tuple[str, str, str]:
        return (self.input_fingerprint, self.config_hash, self.code_version)


def manifest_path(store: Store, stage: str) -> Path:
    return store.root / "stages" / f"{stage}.json"


def read_manifest(store: Store, stage: str) -> StageManifest | None:
    p = manifest_path(store, stage)
    if not p.exists():
        return None
    try:
        return StageManifest(**json.loads(p.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None  # unreadable manifest: recompute


def write_manifest(store: Store, manifest: StageManifest) -> Path:
    """Write the manifest atomically (temp file + rename)."""
    p = manifest_path(store, manifest.stage)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.__dict__, indent=2, sort_keys=True, default=str))
    os.replace(tmp, p)
    return p


def clear_manifest(store: Store, stage: str) -> None:
    manifest_path(store, stage).unlink(missing_ok=True)


def expected_manifest(
    store: Store, spec: StageSpec, config: BaseModel | None, source: str | os.PathLike[str] | None = None,
    extra_inputs: Mapping[str, Any] | None = None,
) -> StageManifest:
    """The manifest the stage would have if it ran now (without its outputs/summary filled in).

    `extra_inputs` (JSON-able) joins the input fingerprint, e.g. the path of a reference model.
    """
    parts = [path_fingerprint(store, spec.inputs)]
    if source is not None and spec.name == "ingest":
        parts.append(source_fingerprint(source))
    if extra_inputs:
        parts.append(json.dumps(extra_inputs, sort_keys=True, default=str))
    fp = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return StageManifest(
        stage=spec.name,
        input_fingerprint=fp,
        config_hash=config_fingerprint(config_dump(config) or {}),
        code_version=code_version(spec),
    )


def is_up_to_date(store: Store, spec: StageSpec, expected: StageManifest) -> StageManifest | None:
    """The stored manifest when the stage can be skipped, else None.

    Skips only when inputs, config and code match *and* the outputs are what the stage left
    (same part files, sizes, mtimes).
    """
    old = read_manifest(store, spec.name)
    if old is None or old.key() != expected.key():
        return None
    if old.output_fingerprint != path_fingerprint(store, spec.outputs):
        return None
    return old


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class StageCache:
    """The stage cache of one output folder: skip a stage whose manifest still matches, else run it
    and record its manifest."""

    def __init__(self, store: Store):
        self.store = store

    def run(self, run: Any, spec: StageSpec, config: BaseModel | None, *, source: str | None = None,
            force: bool = False, progress: bool = False, extra_inputs: Mapping[str, Any] | None = None,
            before: Callable[[], Any] | None = None) -> dict[str, Any]:
        """Run (or skip) one stage and record its manifest; returns {cached, seconds, summary, computed_by,
        shards}. `before()` runs first when the stage is computed (the flows map an image stage's shards
        there); its return value is reported as `shards`."""
        t0 = time.perf_counter()
        expected = expected_manifest(self.store, spec, config, source=source, extra_inputs=extra_inputs)
        old = None if force else is_up_to_date(self.store, spec, expected)
        if old is not None:
            run.counts[f"stages.{spec.name}.cached"] = 1
            return {"cached": True, "seconds": time.perf_counter() - t0, "summary": old.summary,
                    "computed_by": old.run_id, "shards": None}
        clear_manifest(self.store, spec.name)
        started = now_iso()
        shards = before() if before is not None else None
        args = (self.store, run) if spec.config_cls is None else (self.store, run, config)
        summary = dict(spec.run(*args, progress=progress) or {})
        run.counts[f"stages.{spec.name}.computed"] = 1
        expected.output_fingerprint = path_fingerprint(self.store, spec.outputs)
        expected.run_id = run.run_id
        expected.summary = summary
        expected.started_at = started
        expected.finished_at = now_iso()
        write_manifest(self.store, expected)
        return {"cached": False, "seconds": time.perf_counter() - t0, "summary": summary,
                "computed_by": run.run_id, "shards": shards}

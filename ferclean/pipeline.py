"""Stage registry, per-stage config loading and stage manifests (cache/resume) for the flows.

The curate pipeline is `ingest -> faces -> aus -> au_graph -> train -> dataset_issues -> relabel
-> export`. Each stage is a library function `run_<stage>(store, run, config, progress=True) ->
dict` in its own module; this module only *finds* them (a stage whose module is not there yet is
"unavailable" and a flow stops before it), builds their pydantic configs from one YAML/JSON file,
and decides whether a stage can be skipped.

Stage manifests (the caching rule)
----------------------------------
After a stage completes, `OUT/stages/<stage>.json` records:

- `input_fingerprint`: a hash over the stage's input tables' part files (name, size, mtime in
  ns) - and, for ingest, over the source manifest and the files in its folder;
- `config_hash`: :func:`ferclean.shards.config_fingerprint` of the stage config;
- `code_version`: ferclean's version plus a hash of the stage module's source files;
- `output_fingerprint`: the same hash over the stage's output tables/folders;
- the stage's summary dict, the run id that computed it, and timestamps.

A later run skips the stage when all four still match (outputs unchanged since they were
written, so nobody deleted or edited them). Part keys of the image stages are content+config
hashes, so an interrupted image stage also resumes per shard (see :mod:`ferclean.shards`).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field

import ferclean
from ferclean.model_dir import ModelDir
from ferclean.noise import RelabelConfig
from ferclean.shards import Shard, ShardFn, config_fingerprint
from ferclean.store import Store


@dataclass(frozen=True)
class StageSpec:
    """A pipeline stage: where its function lives and what it reads and writes.

    `inputs`/`outputs` name tables under `OUT/tables/` or, when they end in `/`, folders under
    `OUT/` (e.g. `model/`). They only drive the cache fingerprint; the stage itself decides
    what it reads.
    """

    name: str
    module: str
    func: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    image_stage: bool = False  # per-shard work (mapped in the flows)
    optional: bool = False  # the pipeline may go past it when it is unavailable


CURATE_STAGES: tuple[StageSpec, ...] = (
    StageSpec("ingest", "ferclean.ingest", "run_ingest", (), ("samples",)),
    StageSpec("faces", "ferclean.faces", "run_faces", ("samples",), ("faces",), image_stage=True),
    StageSpec("aus", "ferclean.aus", "run_aus", ("samples", "faces"), ("aus",), image_stage=True),
    StageSpec("au_graph", "ferclean.au_graph", "run_au_graph", ("samples", "faces", "aus"), ("au_graph",)),
    StageSpec(
        "train", "ferclean.train", "run_train",
        ("samples", "faces", "aus", "au_graph"), ("predictions", "model/"),
    ),
    # dataset_issues runs after train (it can use the model's embeddings) and before relabel, so
    # the verdicts see duplicates (drop), split leaks and non-faces in the same run.
    StageSpec(
        "dataset_issues", "ferclean.dataset_issues", "run_dataset_issues",
        ("samples", "faces", "model/"), ("dataset_issues",), optional=True,
    ),
    StageSpec(
        "relabel", "ferclean.relabel", "run_relabel",
        ("samples", "faces", "predictions", "dataset_issues"), ("relabels",),
    ),
    StageSpec(
        "export", "ferclean.export", "run_export",
        ("samples", "faces", "predictions", "relabels"), ("export/",), optional=True,
    ),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in CURATE_STAGES)



class ScoreConfig(BaseModel):
    """Settings of the `score` stage of relabel-collection: apply a trained model, no training."""

    model_dir: str = Field(description="folder of a trained model (a curate run's OUT/model)")
    collection: str | None = Field(None, description="score only this samples.collection (default: all)")
    relabel: RelabelConfig = Field(
        default_factory=RelabelConfig, description="the verdict rule (thresholds); filled from the config file's "
        "`relabel:` section when it has one")


def run_score(store: Store, run: Any, config: ScoreConfig, progress: bool = True) -> dict:
    """Score samples with the model in `config.model_dir` and write predictions + verdicts.

    Thin adapter to :func:`ferclean.relabel.score_collection` with the stage signature.
    """
    from ferclean.relabel import score_collection

    return score_collection(store, run, ModelDir(config.model_dir).require(), config.relabel,
                            collection=config.collection, progress=progress)


#: relabel-collection: a trained model applied to a new collection (no training).
RELABEL_COLLECTION_STAGES: tuple[StageSpec, ...] = (
    CURATE_STAGES[0],
    CURATE_STAGES[1],
    CURATE_STAGES[2],
    StageSpec("score", "ferclean.pipeline", "run_score", ("samples", "faces", "aus"), ("predictions", "relabels")),
)

#: Named pipelines (the flows pass the name so subflows can rebuild specs from plain parameters).
STAGE_SETS: dict[str, tuple[StageSpec, ...]] = {"curate": CURATE_STAGES, "relabel_collection": RELABEL_COLLECTION_STAGES}


def get_spec(name: str, stages: Sequence[StageSpec] = CURATE_STAGES) -> StageSpec:
    for s in stages:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; stages are {[s.name for s in stages]}")


# -- discovery ---------------------------------------------------------------------------------
def load_stage_function(spec: StageSpec) -> Callable[..., dict] | None:
    """The stage's `run_<stage>` function, or None when its module or function does not exist.

    A module that exists but fails to import for another reason (a bug, a missing dependency)
    raises: hiding that would silently shorten the pipeline.
    """
    try:
        mod = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == spec.module or spec.module.startswith(exc.name + ".")):
            return None
        raise
    fn = getattr(mod, spec.func, None)
    return fn if callable(fn) else None


def available(spec: StageSpec) -> bool:
    return load_stage_function(spec) is not None


def config_class(fn: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic class of the `config` parameter of a stage function (None if unannotated)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - forward references that cannot be resolved
        hints = {}
    cls = hints.get("config")
    if cls is None:
        params = list(inspect.signature(fn).parameters.values())
        cls = params[2].annotation if len(params) > 2 else None
    if typing.get_origin(cls) in (typing.Union, types.UnionType):  # `FacesConfig | None`
        members = [a for a in typing.get_args(cls) if a is not type(None)]
        cls = members[0] if len(members) == 1 else None
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return cls
    return None


def resolve_until(until: str | None, stages: Sequence[StageSpec] = CURATE_STAGES) -> list[StageSpec]:
    """Stages to run: from the first up to `until` (inclusive), stopping at the first unavailable.

    `until=None` means "as far as the available stages go": the plan stops before the first
    required stage whose module is missing (optional stages that are missing are left out).
    Asking for an `until` beyond a missing required stage raises ValueError naming it.
    """
    names = [s.name for s in stages]
    if until is not None and until not in names:
        raise ValueError(f"--until must be one of {names}, got {until!r}")
    plan: list[StageSpec] = []
    for s in stages:
        if available(s):
            plan.append(s)
        elif not s.optional:
            if until is not None and names.index(until) >= names.index(s.name):
                raise ValueError(
                    f"stage {s.name!r} is not available yet ({s.module}.{s.func} missing); "
                    f"run with --until {plan[-1].name if plan else 'ingest'}"
                )
            break
        if until is not None and s.name == until:
            break
    return plan


# -- per-shard work of the image stages ---------------------------------------------------------
@dataclass(frozen=True)
class ShardWork:
    """What the flows map over for an image stage: `fn(store, shard, job)` writes `out_table`."""

    out_table: str
    fn: ShardFn
    job: Any
    shards: list[Shard]


def _faces_work(store: Store, config: Any, run_id: str) -> ShardWork:
    from ferclean.faces.stage import STAGE, faces_shard, shard_plan

    shards, job = shard_plan(store, config, run_id)
    return ShardWork(STAGE, faces_shard, job, shards)


def _aus_work(store: Store, config: Any, run_id: str) -> ShardWork | None:
    # Only the geometric backend is sharded; the others run whole.
    if config.backend != "geometric" or store.count("faces") == 0:
        return None
    from ferclean.aus.stage import geometric_shard, geometric_shard_plan, resolve_reference

    shards, job = geometric_shard_plan(store, config, resolve_reference(store, config), run_id)
    return ShardWork("aus", geometric_shard, job, shards)


#: stage name -> function(store, config, run_id) -> ShardWork. A stage module can instead expose
#: `shard_work(store, config, run_id) -> ShardWork`, which wins.
SHARD_ADAPTERS: dict[str, Callable[[Store, Any, str], ShardWork | None]] = {"faces": _faces_work, "aus": _aus_work}


def has_shard_work(spec: StageSpec) -> bool:
    """Whether the flows can map this stage per shard (an image stage with a shard plan)."""
    if not spec.image_stage or load_stage_function(spec) is None:
        return False
    mod = importlib.import_module(spec.module)
    return callable(getattr(mod, "shard_work", None)) or spec.name in SHARD_ADAPTERS


def shard_work(spec: StageSpec, store: Store, config: Any, run_id: str) -> ShardWork | None:
    """The shards of an image stage for the flows to map, or None (the stage then runs whole)."""
    if not spec.image_stage or load_stage_function(spec) is None:
        return None
    mod = importlib.import_module(spec.module)
    fn = getattr(mod, "shard_work", None) or SHARD_ADAPTERS.get(spec.name)
    return None if fn is None else fn(store, config, run_id)


# -- configs -----------------------------------------------------------------------------------
def read_config_file(path: str | os.PathLike[str] | None) -> dict[str, dict[str, Any]]:
    """Parse a YAML or JSON file of `{stage: {field: value}}` (an empty dict when `path` is None)."""
    if path is None:
        return {}
    text = Path(path).read_text()
    doc = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    doc = doc or {}
    if not isinstance(doc, dict) or not all(isinstance(v, dict | None) for v in doc.values()):
        raise ValueError(f"{path}: expected a mapping of stage name -> settings")
    return {k: dict(v or {}) for k, v in doc.items()}


def build_configs(
    plan: Sequence[StageSpec],
    raw: Mapping[str, Mapping[str, Any]],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    all_stages: Sequence[StageSpec] = CURATE_STAGES,
) -> dict[str, BaseModel | None]:
    """One validated config per planned stage: file settings, then `overrides` on top.

    `overrides[stage]` keys are only applied when the stage's config class has that field (so a
    flow can pass `limit`/`workers` without knowing each class). Unknown stage names in `raw`
    raise ValueError; unknown fields raise pydantic's ValidationError when the class forbids them.
    """
    # Any stage name of any pipeline is accepted, so one file can configure both flows.
    known = {s.name for s in all_stages} | {s.name for ss in STAGE_SETS.values() for s in ss}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"config file names unknown stages {sorted(unknown)}; stages are {sorted(known)}")
    rule = _relabel_config(raw, overrides)
    out: dict[str, BaseModel | None] = {}
    for spec in plan:
        if spec.name == "relabel":
            out[spec.name] = rule
            continue
        fn = load_stage_function(spec)
        cls = config_class(fn) if fn else None
        settings = dict(raw.get(spec.name, {}))
        if cls is None:
            if settings:
                raise ValueError(f"stage {spec.name!r} takes no config but the file sets {sorted(settings)}")
            out[spec.name] = None
            continue
        for key, value in (overrides or {}).get(spec.name, {}).items():
            if key in cls.model_fields and value is not None:
                settings[key] = value
        if "relabel" in cls.model_fields and cls.model_fields["relabel"].annotation is RelabelConfig:
            if "relabel" in settings:
                raise ValueError(f"{spec.name}.relabel: set the verdict rule in the file's relabel: section "
                                 "(one RelabelConfig for every stage that uses it)")
            settings["relabel"] = rule
        out[spec.name] = cls.model_validate(settings)
    return out


def _relabel_config(raw: Mapping[str, Mapping[str, Any]],
                    overrides: Mapping[str, Mapping[str, Any]] | None) -> RelabelConfig:
    """The one RelabelConfig of a run (the `relabel:` section), for the relabel stage and for every stage
    whose config has a `relabel` field (train: the final model's labels; score)."""
    settings = dict(raw.get("relabel", {}))
    for key, value in (overrides or {}).get("relabel", {}).items():
        if key in RelabelConfig.model_fields and value is not None:
            settings[key] = value
    return RelabelConfig.model_validate(settings)


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
    """ferclean's version plus a hash of the stage module's source (the package folder for packages)."""
    mod = importlib.import_module(spec.module)
    files: list[Path] = []
    if getattr(mod, "__path__", None):
        for p in mod.__path__:
            files.extend(sorted(Path(p).rglob("*.py")))
    elif getattr(mod, "__file__", None):
        files.append(Path(mod.__file__))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
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

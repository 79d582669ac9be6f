"""The stage registry: the curate and relabel-collection pipelines as lists of :class:`StageSpec`.

The curate pipeline is `ingest -> faces -> aus -> au_graph -> train -> dataset_issues -> relabel
-> export`. Each stage is a library function `run_<stage>(store, run, config, progress=True) ->
dict`, registered here by a plain import with its config class, its input/output tables and (image
stages and score) its shard plan. This module also builds the stages' pydantic configs from one YAML/JSON
file, with one :class:`~ferclean.noise.RelabelConfig` (the `relabel:` section) for every stage that
judges labels. Whether a stage can be skipped is :mod:`ferclean.stage_cache`'s job; the flows in
`flows/` only orchestrate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ferclean.au_graph import AuGraphConfig, run_au_graph
from ferclean.aus.stage import AusConfig, run_aus
from ferclean.aus.stage import shard_work as aus_shard_work
from ferclean.dataset_issues.config import DatasetIssuesConfig
from ferclean.dataset_issues.stage import run_dataset_issues
from ferclean.export import ExportConfig, run_export
from ferclean.faces.config import FacesConfig
from ferclean.faces.stage import run_faces
from ferclean.faces.stage import shard_work as faces_shard_work
from ferclean.ingest.config import IngestConfig
from ferclean.ingest.core import run_ingest
from ferclean.noise import RelabelConfig
from ferclean.relabel import run_relabel
from ferclean.score import ScoreConfig, run_score
from ferclean.score_shards import shard_work as score_shard_work
from ferclean.stage_spec import ShardWork, StageSpec
from ferclean.train.config import TrainConfig
from ferclean.train.stage import run_train

__all__ = ["CURATE_STAGES", "RELABEL_COLLECTION_STAGES", "STAGE_NAMES", "STAGE_SETS", "ShardWork", "StageSpec",
           "build_configs", "get_spec", "read_config_file", "resolve_until"]

CURATE_STAGES: tuple[StageSpec, ...] = (
    StageSpec("ingest", run_ingest, IngestConfig, (), ("samples",)),
    StageSpec("faces", run_faces, FacesConfig, ("samples",), ("faces",), shard_plan=faces_shard_work),
    StageSpec("aus", run_aus, AusConfig, ("samples", "faces"), ("aus",), shard_plan=aus_shard_work),
    StageSpec("au_graph", run_au_graph, AuGraphConfig, ("samples", "faces", "aus"), ("au_graph",)),
    StageSpec("train", run_train, TrainConfig, ("samples", "faces", "aus", "au_graph"), ("predictions", "model/")),
    # dataset_issues runs after train (it can use the model's embeddings) and before relabel, so
    # the verdicts see duplicates (drop), split leaks and non-faces in the same run.
    StageSpec("dataset_issues", run_dataset_issues, DatasetIssuesConfig, ("samples", "faces", "model/"),
              ("dataset_issues",)),
    StageSpec("relabel", run_relabel, RelabelConfig, ("samples", "faces", "predictions", "dataset_issues"),
              ("relabels",)),
    StageSpec("export", run_export, ExportConfig, ("samples", "faces", "predictions", "relabels"), ("export/",)),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in CURATE_STAGES)

#: relabel-collection: a trained model applied to a new collection (no training).
RELABEL_COLLECTION_STAGES: tuple[StageSpec, ...] = (
    *CURATE_STAGES[:3],
    StageSpec("score", run_score, ScoreConfig, ("samples", "faces", "aus"), ("predictions", "relabels"),
              shard_plan=score_shard_work),
)

#: Named pipelines (the flows pass the name so subflows can rebuild specs from plain parameters).
STAGE_SETS: dict[str, tuple[StageSpec, ...]] = {"curate": CURATE_STAGES, "relabel_collection": RELABEL_COLLECTION_STAGES}


def get_spec(name: str, stages: Sequence[StageSpec] | None = None) -> StageSpec:
    stages = STAGE_SETS["curate"] if stages is None else stages
    for s in stages:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; stages are {[s.name for s in stages]}")


def resolve_until(until: str | None, stages: Sequence[StageSpec] | None = None) -> list[StageSpec]:
    """Stages to run: from the first up to `until` (inclusive; None = all). Unknown names raise ValueError."""
    stages = list(STAGE_SETS["curate"] if stages is None else stages)
    names = [s.name for s in stages]
    if until is None:
        return stages
    if until not in names:
        raise ValueError(f"--until must be one of {names}, got {until!r}")
    return stages[: names.index(until) + 1]


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
    all_stages: Sequence[StageSpec] | None = None,
) -> dict[str, BaseModel | None]:
    """One validated config per planned stage: file settings, then `overrides` on top.

    `overrides[stage]` keys are only applied when the stage's config class has that field (so a
    flow can pass `limit`/`workers` without knowing each class). Unknown stage names in `raw`
    raise ValueError; unknown fields raise pydantic's ValidationError when the class forbids them.
    """
    # Any stage name of any pipeline is accepted, so one file can configure both flows.
    known = {s.name for s in all_stages or ()} | {s.name for ss in STAGE_SETS.values() for s in ss}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"config file names unknown stages {sorted(unknown)}; stages are {sorted(known)}")
    rule = _relabel_config(raw, overrides)
    out: dict[str, BaseModel | None] = {}
    for spec in plan:
        cls = spec.config_cls
        if cls is RelabelConfig:  # the relabel stage: the run's one rule
            out[spec.name] = rule
            continue
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

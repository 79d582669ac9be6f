"""The relabel-collection flow: apply a trained model to a new collection, no training.

`ingest -> faces -> aus -> score` into a new OUT, one `runs` row (kind `relabel-collection`):
the aus stage reuses the training run's neutral AU reference (so AU intensities are measured
against the same neutral face as in training), and `score` writes `predictions` (fold -1) and one
`relabels` verdict per scored sample with the model's method (see
:func:`ferclean.relabel.score_collection`).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from flows.stages import TASK_RUNNERS, call_stage, catalog_task  # first: sets Prefect defaults

from prefect import flow, get_run_logger  # noqa: I001

from ferclean import pipeline
from ferclean.model_dir import ModelDir
from ferclean.runs import open_run
from ferclean.stage_cache import config_dump, folder_fingerprint, read_manifest
from ferclean.store import Store

STAGES = "relabel_collection"


def model_au_reference(model_dir: str | Path) -> str | None:
    """Path of the neutral AU reference that goes with a trained model, or None.

    Looked up in order: `model.json`'s `neutral_au_reference` when it is a path,
    `<model_dir>/aus_reference.json`, and the reference the training OUT's aus stage used (its
    stage manifest `OUT/stages/aus.json`, for a model at `OUT/model`).
    """
    md = ModelDir(Path(model_dir).expanduser().resolve())
    ref = md.au_reference()
    if ref is not None:
        return str(ref)
    manifest = read_manifest(Store(md.path.parent), "aus")
    if manifest is not None:
        ref = manifest.summary.get("reference_path")
        if isinstance(ref, str) and Path(ref).is_file():
            return ref
    return None


@flow(name="ferclean-relabel-collection", flow_run_name="relabel-collection-{out}", log_prints=True)
def relabel_collection_flow(
    source: str,
    out: str,
    model_dir: str,
    config_file: str | None = None,
    limit: int | None = None,
    workers: int = 1,
    task_runner: str = "default",
    scheduler_address: str | None = None,
    force: bool = False,
    allow_refit_reference: bool = False,
    root: str | None = None,
    retries: int = 2,
    retry_delay_s: float = 2.0,
    progress: bool = False,
) -> dict[str, Any]:
    """Score a new collection `source` into `out` with the model in `model_dir` (no training).

    `config_file` sections: ingest, faces, aus, score, relabel (the verdict rule's thresholds).
    The AU reference comes from :func:`model_au_reference`; when none is found the flow fails
    unless `allow_refit_reference` (then it is fitted on the new collection, which changes what
    AU intensities mean); `root` as for curate. Other parameters as in :func:`flows.curate.curate_flow`.
    """
    if task_runner not in TASK_RUNNERS:
        raise ValueError(f"task_runner must be one of {TASK_RUNNERS}")
    logger = get_run_logger()
    store = Store(out)
    run_config: dict[str, Any] = {
        "flow": "relabel-collection", "source": source, "model_dir": model_dir, "config_file": config_file,
        "limit": limit, "workers": workers, "task_runner": task_runner, "scheduler_address": scheduler_address,
        "force": force, "root": root,
    }
    shard_runner = {"kind": task_runner, "workers": workers, "scheduler_address": scheduler_address,
                    "retries": retries, "retry_delay_s": retry_delay_s}
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    with open_run(store, "relabel-collection", run_config) as run:
        if Path(out).expanduser().resolve() == Path(model_dir).expanduser().resolve().parent:
            raise ValueError("relabel-collection writes a new OUT: pick a folder other than the model's run folder")
        stages = pipeline.STAGE_SETS[STAGES]
        plan = pipeline.resolve_until(None, stages)
        raw = pipeline.read_config_file(config_file)
        reference = raw.get("aus", {}).get("reference_path") or model_au_reference(model_dir)
        if reference is None and not allow_refit_reference:
            raise FileNotFoundError(
                f"no neutral AU reference found for the model at {model_dir} (model.json, "
                "aus_reference.json, or its run's stages/aus.json); set aus.reference_path in the config "
                "or pass allow_refit_reference=True"
            )
        overrides: dict[str, dict[str, Any]] = {s.name: {"workers": workers} for s in plan}
        overrides["ingest"] = {"source": source, "limit": limit, "workers": workers,
                               **({"root": root} if root else {})}
        overrides["aus"] = {"reference_path": reference, "workers": workers}
        overrides["score"] = {"model_dir": str(Path(model_dir).expanduser().resolve())}
        configs = pipeline.build_configs(plan, raw, overrides, all_stages=stages)
        run.config.update({
            "au_reference": reference, "stages": [s.name for s in plan],
            "configs": {k: config_dump(v) for k, v in configs.items()},
        })
        extra = {
            "score": {"model": folder_fingerprint(model_dir)},
            "aus": {"reference_sha256": hashlib.sha256(Path(reference).read_bytes()).hexdigest()} if reference else None,
        }
        logger.info("run %s: stages %s, AU reference %s", run.run_id, [s.name for s in plan], reference)
        for spec in plan:
            results[spec.name] = call_stage(
                spec.name, store, run, configs[spec.name], source=source, force=force, progress=progress,
                shard_runner=shard_runner, stages=STAGES, extra_inputs=extra.get(spec.name),
            )
        tables = catalog_task(store, prefix="ferclean-relabel-collection")
        run.counts["flow.seconds"] = round(time.perf_counter() - t0)
    return {"run_id": run.run_id, "out": str(store.root), "stages": results, "tables": tables}

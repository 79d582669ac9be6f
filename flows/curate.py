"""The curate flow: ingest -> faces -> aus -> au_graph -> train -> dataset_issues -> relabel ->
export, then a catalog refresh. One `runs` row (kind `curate`) per flow run.

Run it from Python (`curate_flow(source=..., out=...)`), from the CLI (`ferclean curate`), or
as a deployment (`ferclean serve`). The stages and their configs come from :mod:`ferclean.pipeline`,
the skip-or-run decision from :mod:`ferclean.stage_cache`; this module only orchestrates.
"""

from __future__ import annotations

import time
from typing import Any

from flows.stages import TASK_RUNNERS, call_stage, catalog_task  # first: sets Prefect defaults

from prefect import flow, get_run_logger  # noqa: I001

from ferclean import pipeline
from ferclean.runs import open_run
from ferclean.stage_cache import config_dump
from ferclean.store import Store


def curate_plan(
    source: str, until: str | None, config_file: str | None, limit: int | None, workers: int | None,
    root: str | None = None,
    init_model: str | None = None,
) -> tuple[list[pipeline.StageSpec], dict[str, Any]]:
    """The stages to run and their validated configs (file settings + the flow's overrides).

    `source`/`limit`/`root` go to the ingest config; `workers` to every stage config that has a
    `workers` field; `init_model` (warm start) to the train config.
    """
    plan = pipeline.resolve_until(until)
    raw = pipeline.read_config_file(config_file)
    overrides: dict[str, dict[str, Any]] = {s.name: {"workers": workers} for s in plan}
    overrides["ingest"] = {"source": source, "limit": limit, "workers": workers,
                           **({"root": root} if root else {})}
    overrides["train"] = {"workers": workers, "init_model": init_model}
    return plan, pipeline.build_configs(plan, raw, overrides)


@flow(name="ferclean-curate", flow_run_name="curate-{out}", log_prints=True)
def curate_flow(
    source: str,
    out: str,
    until: str | None = None,
    config_file: str | None = None,
    limit: int | None = None,
    workers: int = 1,
    task_runner: str = "default",
    scheduler_address: str | None = None,
    force: bool = False,
    root: str | None = None,
    retries: int = 2,
    retry_delay_s: float = 2.0,
    progress: bool = False,
    init_model: str | None = None,
) -> dict[str, Any]:
    """Curate a collection into OUT.

    Parameters: `source` (image folder, CSV manifest or FER2013 CSV), `out` (output folder),
    `until` (last stage; default: export), `config_file` (YAML/JSON
    `{stage: {field: value}}`), `limit` (first N input rows), `workers` (parallel shard tasks),
    `task_runner` ('default' threads | 'process' | 'dask'), `scheduler_address` (an existing Dask
    scheduler; else a LocalCluster of `workers` processes), `force` (recompute even cached stages),
    `root` (the folder manifest image paths are read from and must lie in; default the
    manifest's folder), `retries`/`retry_delay_s` (per shard task; back-off doubles per retry),
    `init_model` (warm start: an earlier run's model folder every training starts from; overrides
    the file's train.init_model).

    Returns {run_id, out, stages: {stage: {cached, seconds, summary, shards}}, tables}.
    """
    if task_runner not in TASK_RUNNERS:
        raise ValueError(f"task_runner must be one of {TASK_RUNNERS}")
    logger = get_run_logger()
    store = Store(out)
    run_config: dict[str, Any] = {
        "flow": "curate", "source": source, "until": until, "config_file": config_file, "limit": limit,
        "workers": workers, "task_runner": task_runner, "scheduler_address": scheduler_address, "force": force,
        "root": root, "init_model": init_model,
    }
    shard_runner = {"kind": task_runner, "workers": workers, "scheduler_address": scheduler_address,
                    "retries": retries, "retry_delay_s": retry_delay_s}
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    with open_run(store, "curate", run_config) as run:
        # Inside the run, so a bad config file or --until also leaves a failed `runs` row.
        plan, configs = curate_plan(source, until, config_file, limit, workers, root, init_model)
        run.config["stages"] = [s.name for s in plan]
        run.config["configs"] = {k: config_dump(v) for k, v in configs.items()}
        logger.info("run %s: stages %s", run.run_id, [s.name for s in plan])
        for spec in plan:
            results[spec.name] = call_stage(
                spec.name, store, run, configs[spec.name], source=source, force=force, progress=progress,
                shard_runner=shard_runner,
            )
        tables = catalog_task(store)
        run.counts["flow.seconds"] = round(time.perf_counter() - t0)
    return {"run_id": run.run_id, "out": str(store.root), "stages": results, "tables": tables}


if __name__ == "__main__":  # python -m flows.curate SOURCE OUT
    import sys

    print(curate_flow(source=sys.argv[1], out=sys.argv[2]))

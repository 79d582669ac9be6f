"""Deployments with schedules for both flows, served by one long-running process (`ferclean serve`).

`prefect.serve` registers the deployments with the Prefect API named by PREFECT_API_URL (a
`prefect server start` server, or Prefect Cloud); `ferclean serve` starts a server of its own
when that is unset (Prefect's embedded temporary API has no scheduler, see
:mod:`ferclean.prefect_server`). The process then polls for scheduled and manually
triggered runs and executes them locally. See README "Scheduling" and docs/scaling.md.
"""

from __future__ import annotations

from typing import Any

from prefect.deployments.runner import EntrypointType, RunnerDeployment

from flows.curate import curate_flow
from flows.relabel_collection import relabel_collection_flow

CURATE_DEPLOYMENT = "nightly-curate"
RELABEL_DEPLOYMENT = "nightly-relabel-collection"


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _when(cron: str, interval: float | None, timezone: str) -> str:
    return f"every {interval:g} s" if interval is not None else f"{cron} {timezone}"


def build_deployments(
    source: str | None,
    out: str | None,
    cron: str = "0 2 * * *",
    timezone: str = "UTC",
    config_file: str | None = None,
    limit: int | None = None,
    workers: int = 1,
    task_runner: str = "default",
    scheduler_address: str | None = None,
    root: str | None = None,
    interval: float | None = None,
    relabel_source: str | None = None,
    relabel_out: str | None = None,
    model_dir: str | None = None,
    relabel_cron: str = "0 4 * * *",
    init_model: str | None = None,
) -> list[RunnerDeployment]:
    """The deployments to serve: curate `source` -> `out` on `cron`, and when `relabel_source` is
    given, relabel-collection `relabel_source` -> `relabel_out` with `model_dir` (default
    `out/model`) on `relabel_cron`. Cron strings are 5-field crontab in `timezone`; `interval`
    (seconds) replaces both crons. `root` is the manifests' image root of both flows.
    `init_model`: the curate runs' warm start (a model folder; e.g. `out/model` to start each
    nightly run from the previous night's model).
    """
    from datetime import timedelta

    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    # One run at a time per deployment: two runs writing the same OUT would collide; a run that
    # comes due while the previous one still runs is cancelled (the next one picks up its work).
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)

    def schedule(cron_: str):  # noqa: ANN202
        if interval is not None:
            return IntervalSchedule(interval=timedelta(seconds=interval), timezone=timezone)
        return CronSchedule(cron=cron_, timezone=timezone)

    common = _clean({"config_file": config_file, "limit": limit, "workers": workers, "task_runner": task_runner,
                     "scheduler_address": scheduler_address, "root": root})
    deps: list[RunnerDeployment] = []
    if source:
        if not out:
            raise ValueError("a curate deployment needs an output folder")
        deps.append(curate_flow.to_deployment(
            name=CURATE_DEPLOYMENT,
            schedule=schedule(cron),
            concurrency_limit=one_at_a_time,
            parameters={"source": source, "out": out, **common, **_clean({"init_model": init_model})},
            description=f"Curate {source} into {out} ({_when(cron, interval, timezone)}); cached stages are not "
                        "recomputed.",
            tags=["ferclean", "curate"],
            entrypoint_type=EntrypointType.MODULE_PATH,
        ))
    if relabel_source:
        model = model_dir or (f"{out.rstrip('/')}/model" if out else None)
        if not (relabel_out and model):
            raise ValueError("a relabel-collection deployment needs relabel_out and model_dir (or out)")
        deps.append(relabel_collection_flow.to_deployment(
            name=RELABEL_DEPLOYMENT,
            schedule=schedule(relabel_cron),
            concurrency_limit=one_at_a_time,
            parameters={"source": relabel_source, "out": relabel_out, "model_dir": model, **common},
            description=f"Score {relabel_source} with {model} into {relabel_out} "
                        f"({_when(relabel_cron, interval, timezone)}).",
            tags=["ferclean", "relabel-collection"],
            entrypoint_type=EntrypointType.MODULE_PATH,
        ))
    if not deps:
        raise ValueError("nothing to serve: give a curate source and/or a relabel source")
    return deps


def serve(deployments: list[RunnerDeployment], limit: int | None = None) -> None:
    """Register `deployments` and run their scheduled runs until interrupted (blocks)."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments, limit=limit)

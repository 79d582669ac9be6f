"""Prefect building blocks shared by the flows: stage tasks, per-shard mapping, task runners.

No maths here: every task calls a ferclean library function.

- :func:`stage_task` runs one `run_<stage>` in the flow's process (it needs the flow's `Run`
  object for rejects and counts) through the library's stage cache
  (:class:`ferclean.stage_cache.StageCache`: skipped when its manifest says nothing changed), and
  publishes the stage's Markdown artifact.
- For an image stage (and the score stage), :func:`shards_flow` first maps :func:`shard_task` over the stage's shards
  on the chosen task runner (threads, processes, or Dask), each shard a task with retries and
  exponential back-off, so one bad shard retries alone and finished shards are never redone
  (their parts exist). The stage function then runs once to finish the stage (every shard is
  already written, so it only merges rejects/counts and drops stale parts).
"""

from __future__ import annotations

import os
from contextlib import nullcontext

# Prefect's embedded temporary API must answer within 20 s by default, which a busy 2-core
# machine misses; allow 120 s unless set otherwise. Takes effect when this module is imported
# before Prefect (flows/__init__.py does the same for `import flows`).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# ferclean runs offline; Prefect's telemetry would only log a failed DNS lookup on every run.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from collections.abc import Mapping  # noqa: E402
from typing import Any  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import wait  # noqa: E402
from prefect.states import State  # noqa: E402
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402
from prefect.utilities.annotations import quote, unmapped  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from ferclean import artifacts, pipeline  # noqa: E402
from ferclean.memory import release_unused  # noqa: E402
from ferclean.runs import Run  # noqa: E402
from ferclean.shards import Shard, ShardFn, process_shard  # noqa: E402
from ferclean.stage_cache import StageCache, config_dump  # noqa: E402
from ferclean.stage_executor import lazy_dask_executor  # noqa: E402
from ferclean.stage_spec import StageSpec  # noqa: E402
from ferclean.store import Store  # noqa: E402

TASK_RUNNERS = ("default", "process", "dask")
#: stages that ask ferclean.stage_executor for an executor for work of their own (not shards)
STAGES_ON_EXECUTOR = ("train", "dataset_issues")


def make_task_runner(kind: str = "default", workers: int = 1, scheduler_address: str | None = None) -> TaskRunner:
    """The task runner for the mapped shard tasks.

    - `default`: a thread pool of `workers` threads (image libraries release the GIL);
    - `process`: a process pool of `workers` processes;
    - `dask`: prefect-dask's DaskTaskRunner on a new LocalCluster of `workers` single-threaded
      worker processes, or on the existing cluster at `scheduler_address` (tcp://host:8786).
    """
    if kind == "default":
        return ThreadPoolTaskRunner(max_workers=max(1, workers))
    if kind == "process":
        return ProcessPoolTaskRunner(max_workers=max(1, workers))
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if scheduler_address:
            return DaskTaskRunner(address=scheduler_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": max(1, workers), "threads_per_worker": 1})
    raise ValueError(f"task_runner must be one of {TASK_RUNNERS}, got {kind!r}")


def _retry_on_io(task: Any, task_run: Any, state: State) -> bool:
    """Retry a stage only for I/O errors; a bad config or bad data fails at once."""
    try:
        state.result()
    except (OSError, TimeoutError):
        return True
    except BaseException:  # noqa: BLE001
        return False
    return False


@task(
    name="shard",
    task_run_name="{out_table}-shard-{shard.index:05d}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
)
def shard_task(store: Store, shard: Shard, out_table: str, fn: ShardFn, config: Any) -> int:
    """Compute one shard's part (a no-op when the part exists); returns rows written (-1: skipped)."""
    _, n = process_shard(store, shard, out_table, fn, config)
    release_unused()  # the shard's freed buffers back to the OS, not kept by Arrow's pool or malloc's arenas
    return n


@flow(name="ferclean-shards", flow_run_name="{stage}-shards", validate_parameters=False)
def shards_flow(
    stage: str, out: str, config: dict[str, Any], run_id: str, stages: str = "curate", retries: int = 2,
    retry_delay_s: float = 2.0,
) -> dict[str, int]:
    """Map `shard_task` over the unfinished shards of an image stage (a subflow, so each call can
    use its own task runner). Raises when any shard still fails after its retries."""
    logger = get_run_logger()
    spec = pipeline.get_spec(stage, pipeline.STAGE_SETS[stages])
    # the stage's own config as dumped by the parent flow (validated there already; a stage whose config
    # embeds the run's verdict rule, e.g. score's `relabel`, carries it along)
    cfg = spec.config_cls.model_validate(config) if spec.config_cls is not None else None
    store = Store(out)
    work = spec.shard_plan(store, cfg, run_id) if spec.shard_plan is not None else None
    if work is None:  # e.g. a non-sharded backend: the stage function does all the work
        logger.info("%s: no per-shard work for this config", stage)
        return {"shards": 0, "skipped": 0, "computed": 0, "rows": 0}
    todo = [s for s in work.shards if not store.has_part(work.out_table, s.key)]
    logger.info("%s: %d shards, %d already done, %d to compute", stage, len(work.shards),
                len(work.shards) - len(todo), len(todo))
    t = shard_task.with_options(
        retries=retries, retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_s) if retry_delay_s > 0 else 0
    )
    futures = t.map(
        store=unmapped(store), shard=todo, out_table=unmapped(work.out_table),
        fn=unmapped(work.fn), config=unmapped(work.job),
    )
    wait(futures)
    failed = [(s, f.state) for s, f in zip(todo, futures, strict=True) if not f.state.is_completed()]
    rows = sum(max(f.result(), 0) for f in futures if f.state.is_completed())
    if failed:
        first = failed[0][1]
        raise RuntimeError(
            f"{stage}: {len(failed)} of {len(todo)} shards failed after {retries} retries "
            f"(first: shard {failed[0][0].index}: {first.message})"
        )
    return {"shards": len(work.shards), "skipped": len(work.shards) - len(todo), "computed": len(todo), "rows": rows}


def run_stage(
    store: Store,
    run: Run,
    spec: StageSpec,
    config: BaseModel | None,
    *,
    source: str | None = None,
    force: bool = False,
    progress: bool = False,
    extra_inputs: Mapping[str, Any] | None = None,
    shard_runner: Mapping[str, Any] | None = None,
    stages: str = "curate",
) -> dict[str, Any]:
    """Run (or skip) one stage through the library's stage cache; returns {cached, seconds, summary,
    computed_by, shards}.

    `shard_runner` ({kind, workers, scheduler_address, retries, retry_delay_s}) makes an image
    stage map its shards on that task runner first; None runs the stage function alone.
    """
    def map_shards() -> dict[str, int]:
        assert shard_runner is not None
        sub = shards_flow.with_options(task_runner=make_task_runner(
            shard_runner.get("kind", "default"), shard_runner.get("workers", 1),
            shard_runner.get("scheduler_address")))
        return sub(stage=spec.name, out=str(store.root), config=config_dump(config) or {}, run_id=run.run_id,
                   stages=stages, retries=shard_runner.get("retries", 2),
                   retry_delay_s=shard_runner.get("retry_delay_s", 2.0))

    mapped = shard_runner is not None and spec.shard_plan is not None
    # under --task-runner dask the stages with per-item work of their own run it on the cluster's workers too:
    # train's cross-fitted folds (one fold per worker), dataset_issues' per-image signals (one faces part a task);
    # the cluster starts when the computed stage first asks for it (a cached stage starts none)
    on_dask = (shard_runner is not None and shard_runner.get("kind") == "dask"
               and spec.name in STAGES_ON_EXECUTOR)
    executor = (lazy_dask_executor(shard_runner.get("scheduler_address"), shard_runner.get("workers", 1))
                if on_dask else nullcontext())
    try:
        with executor:
            return StageCache(store).run(run, spec, config, source=source, force=force, progress=progress,
                                         extra_inputs=extra_inputs, before=map_shards if mapped else None)
    finally:
        release_unused()  # what the stage freed goes back to the OS before the next stage


@task(name="stage", task_run_name="{stage}", cache_policy=NO_CACHE, retry_condition_fn=_retry_on_io,
      retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def stage_task(
    stage: str,
    store: Store,
    run: Run,
    config: BaseModel | None,
    source: str | None = None,
    force: bool = False,
    progress: bool = False,
    extra_inputs: Mapping[str, Any] | None = None,
    shard_runner: Mapping[str, Any] | None = None,
    stages: str = "curate",
) -> dict[str, Any]:
    """Prefect task around :func:`run_stage`; publishes the stage's Markdown artifact."""
    spec = pipeline.get_spec(stage, pipeline.STAGE_SETS[stages])
    result = run_stage(
        store, run, spec, config, source=source, force=force, progress=progress,
        extra_inputs=extra_inputs, shard_runner=shard_runner, stages=stages,
    )
    md = artifacts.stage_report(
        store, stage, result["summary"], run.counts, cached=result["cached"], run_id=result["computed_by"]
    )
    artifacts.publish(stage, md, prefix=f"ferclean-{stages}")
    logger = get_run_logger()
    logger.info("%s: %s in %.1f s", stage, "cached" if result["cached"] else "computed", result["seconds"])
    return result


def call_stage(stage: str, store: Store, run: Run, config: BaseModel | None, **kwargs: Any) -> dict[str, Any]:
    """Call :func:`stage_task` with the Run/Store passed by reference (not traversed by Prefect)."""
    return stage_task(stage, quote(store), quote(run), quote(config), **kwargs)


@task(name="catalog", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=_retry_on_io)
def catalog_task(store: Store, prefix: str = "ferclean-curate") -> dict[str, int]:
    """Refresh `OUT/catalog.duckdb` and publish rows per table; returns {table: rows}."""
    from ferclean.catalog import refresh_catalog
    from ferclean.contracts import contract_tables

    refresh_catalog(store)
    counts = {t: store.count(t) for t in contract_tables()}
    md = artifacts.render_report(
        "catalog", {"catalog": str(store.root / "catalog.duckdb")},
        sections={"Rows per table": [{"table": t, "rows": n} for t, n in counts.items()]},
    )
    artifacts.publish("catalog", md, prefix=prefix)
    return counts

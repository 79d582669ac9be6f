"""Where a stage's per-item work runs when the flows hand it a task runner: one owner for "the executor of this stage".

A stage asks :func:`current_executor` for the :class:`StageExecutor` a caller set for the duration of a stage with
:func:`stage_executor`; the flows set one on Dask (:func:`dask_executor`) when a run uses `--task-runner dask`, so
the train stage's cross-fitted folds (`ferclean.train.stage.crossfit`, one fold per worker) and the dataset-issue
search's per-part face signals (`ferclean.dataset_issues.face_parts`) run on the cluster's worker processes like
the image stages' shards. Without one, each stage decides itself (spawned processes or this process).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple


class StageExecutor(NamedTuple):
    """A concurrent.futures executor, the words a stage summary uses for it, and how many tasks it runs at once."""

    executor: Executor
    description: str
    slots: int = 1


_EXECUTOR: ContextVar[StageExecutor | None] = ContextVar("ferclean_stage_executor", default=None)


@contextmanager
def stage_executor(executor: Executor, description: str, slots: int = 1) -> Iterator[StageExecutor]:
    """Run the per-item work of the stages called in this context on `executor` (a concurrent.futures Executor);
    `description` goes into the stage's summary; `slots`: tasks it runs at once (worker threads of a cluster)."""
    current = StageExecutor(executor, description, max(1, slots))
    token = _EXECUTOR.set(current)
    try:
        yield current
    finally:
        _EXECUTOR.reset(token)


def current_executor() -> StageExecutor | None:
    """The executor set by :func:`stage_executor`, or None."""
    return _EXECUTOR.get()


@contextmanager
def dask_executor(scheduler_address: str | None, workers: int) -> Iterator[str]:
    """A Dask client's executor for a stage: on the cluster at `scheduler_address`, or on a new LocalCluster of
    `workers` single-threaded worker processes (closed on exit). Yields the description."""
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler_address:
        client = Client(scheduler_address)
        where = f"dask cluster at {scheduler_address}"
    else:
        cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
        where = f"dask LocalCluster of {max(1, workers)} worker processes"
    try:
        slots = sum(client.nthreads().values()) or max(1, workers)
        with stage_executor(client.get_executor(pure=False), where, slots):
            yield where
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

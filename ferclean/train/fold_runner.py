"""Where the cross-fitted folds train: one after another, in spawned processes, or on a Dask cluster.

`crossfit` (ferclean.train.stage) asks :func:`current_executor` for an executor that a caller set for the
duration of a stage with :func:`fold_executor`; the flows set one on Dask (:func:`dask_fold_executor`) when a
run uses `--task-runner dask`, so the folds train on the cluster's worker processes (one fold per worker) like
the image stages' shards. Without one, `TrainConfig.fold_workers` decides (spawned processes or this process).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from contextvars import ContextVar

_EXECUTOR: ContextVar[tuple[Executor, str] | None] = ContextVar("ferclean_fold_executor", default=None)


@contextmanager
def fold_executor(executor: Executor, description: str) -> Iterator[None]:
    """Train the folds of every `crossfit` in this context on `executor` (a concurrent.futures Executor);
    `description` goes into the train stage's summary."""
    token = _EXECUTOR.set((executor, description))
    try:
        yield
    finally:
        _EXECUTOR.reset(token)


def current_executor() -> tuple[Executor, str] | None:
    """The (executor, description) set by :func:`fold_executor`, or None."""
    return _EXECUTOR.get()


@contextmanager
def dask_fold_executor(scheduler_address: str | None, workers: int) -> Iterator[str]:
    """A Dask client's executor for the folds: on the cluster at `scheduler_address`, or on a new LocalCluster
    of `workers` single-threaded worker processes (closed on exit). Yields the description."""
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
        with fold_executor(client.get_executor(pure=False), where):
            yield where
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

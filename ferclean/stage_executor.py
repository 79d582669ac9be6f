"""Where a stage's per-item work runs when the flows hand it a task runner: one owner for "the executor of this stage".

A stage asks :func:`current_executor` for the :class:`StageExecutor` a caller set for the duration of a stage with
:func:`stage_executor`; the flows set one on Dask (:func:`lazy_dask_executor`) when a run uses `--task-runner dask`,
so the train stage's cross-fitted folds (`ferclean.train.stage.crossfit`, one fold per worker) and the dataset-issue
search's per-part face signals (`ferclean.dataset_issues.face_parts`) run on the cluster's worker processes like
the image stages' shards. Without one, each stage decides itself (spawned processes or this process).

The flows' executor starts lazily: the cluster (or the client of an existing one) is made when the stage first
asks for it, so a stage the stage cache skips never starts one. Work goes out through :meth:`StageExecutor.submit`,
which gives each task glibc's usual malloc thresholds on the worker (:func:`on_worker`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import AbstractContextManager, ExitStack, contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple

from ferclean.memory import undo_low_trim_threshold


def on_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) on a worker process, with glibc's usual malloc thresholds: a Dask worker's nanny sets
    MALLOC_TRIM_THRESHOLD_, which makes every torch buffer an mmap (benchmarks/results/malloc_trim.json: the score
    forward pass 1.9x the CPU, a training fold 1.5x; ferclean.memory.undo_low_trim_threshold)."""
    undo_low_trim_threshold()
    return fn(*args)


class StageExecutor(NamedTuple):
    """A concurrent.futures executor, the words a stage summary uses for it, and how many tasks it runs at once."""

    executor: Executor
    description: str
    slots: int = 1

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """fn(*args) as a task on the executor (through :func:`on_worker`; `fn` must be importable there)."""
        return self.executor.submit(on_worker, fn, *args)


class _LazyExecutor:
    """A StageExecutor made by `start` (a context manager) on first :meth:`get`, closed by :meth:`close`."""

    def __init__(self, start: Callable[[], AbstractContextManager[StageExecutor]]) -> None:
        self._start = start
        self._stack = ExitStack()
        self._value: StageExecutor | None = None

    @property
    def started(self) -> bool:
        return self._value is not None

    def get(self) -> StageExecutor:
        if self._value is None:
            self._value = self._stack.enter_context(self._start())
        return self._value

    def close(self) -> None:
        self._stack.close()
        self._value = None


_EXECUTOR: ContextVar[StageExecutor | _LazyExecutor | None] = ContextVar("ferclean_stage_executor", default=None)


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
    """The executor set by :func:`stage_executor` or :func:`lazy_stage_executor` (started now if lazy), or None."""
    value = _EXECUTOR.get()
    return value.get() if isinstance(value, _LazyExecutor) else value


@contextmanager
def lazy_stage_executor(start: Callable[[], AbstractContextManager[StageExecutor]]) -> Iterator[_LazyExecutor]:
    """Like :func:`stage_executor`, but the executor is made by `start()` only when a stage first asks
    :func:`current_executor` for it, and closed on exit if it was made. Yields the lazy holder (`.started`)."""
    lazy = _LazyExecutor(start)
    token = _EXECUTOR.set(lazy)
    try:
        yield lazy
    finally:
        _EXECUTOR.reset(token)
        lazy.close()


@contextmanager
def dask_executor(scheduler_address: str | None, workers: int) -> Iterator[str]:
    """Run the stages called in this context on a Dask cluster, started now (:func:`dask_stage_executor`).
    Yields the description."""
    with dask_stage_executor(scheduler_address, workers) as ex, stage_executor(*ex) as current:
        yield current.description


def lazy_dask_executor(scheduler_address: str | None, workers: int) -> AbstractContextManager[_LazyExecutor]:
    """:func:`dask_executor`, started only when a stage asks for it (what the flows use: a cached stage starts
    no cluster)."""
    return lazy_stage_executor(lambda: dask_stage_executor(scheduler_address, workers))


@contextmanager
def dask_stage_executor(scheduler_address: str | None, workers: int) -> Iterator[StageExecutor]:
    """A Dask client's executor: on the cluster at `scheduler_address`, or on a new LocalCluster of `workers`
    single-threaded worker processes (closed on exit)."""
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
        yield StageExecutor(client.get_executor(pure=False), where, slots)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

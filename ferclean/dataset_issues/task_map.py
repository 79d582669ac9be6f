"""Per-image work of the dataset-issue search as tasks: in this process, or on the stage's executor
(:class:`ferclean.stage_executor.StageExecutor`, the flows' Dask cluster under `--task-runner dask`), results
always in task order and with a bounded number of tasks submitted or waiting at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from ferclean.stage_executor import StageExecutor


def in_order(submit: Callable[[int], Future], n: int, in_flight: int) -> Iterator[tuple[int, Any]]:
    """(i, result of future i) for i = 0..n-1 in that order, with at most `in_flight` futures submitted or
    finished-but-waiting at a time (`submit(i)` submits task i). Futures not yet read are cancelled on exit."""
    pending: dict[int, Future] = {}
    ready: dict[int, Any] = {}
    submitted = 0
    try:
        for i in range(n):
            while i not in ready:
                while submitted < n and len(pending) + len(ready) < max(1, in_flight):
                    pending[submitted] = submit(submitted)
                    submitted += 1
                done, _ = wait(list(pending.values()), return_when=FIRST_COMPLETED)
                for j in [j for j, f in pending.items() if f in done]:
                    ready[j] = pending.pop(j).result()
            yield i, ready.pop(i)
    finally:
        for f in pending.values():
            f.cancel()


def map_tasks(fn: Callable[..., Any], n: int, args_of: Callable[[int], tuple], runner: StageExecutor | None,
              in_flight: int | None = None) -> Iterator[Any]:
    """fn(*args_of(i)) for i = 0..n-1, in that order: here one after another, or on `runner` with at most
    `in_flight` (default: twice its slots) tasks out at a time. `args_of(i)` is called when task i is submitted
    (so the arguments of every task never exist at once); `fn` must be importable by the workers."""
    if runner is None:
        for i in range(n):
            yield fn(*args_of(i))
        return
    limit = in_flight or 2 * runner.slots
    for _, result in in_order(lambda i: runner.submit(fn, *args_of(i)), n, limit):
        yield result

"""ferclean.stage_executor: the flows' executor starts only when a stage asks for it, and every task it sends to a
worker runs with glibc's usual malloc thresholds (a Dask nanny's MALLOC_TRIM_THRESHOLD_ undone)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from ferclean.stage_executor import StageExecutor, current_executor, lazy_stage_executor, stage_executor


def _double(x: int) -> int:
    return 2 * x


def test_a_lazy_executor_starts_on_first_use_once_and_closes_on_exit():
    events = []

    @contextmanager
    def start():
        events.append("start")
        with ThreadPoolExecutor(1) as pool:
            yield StageExecutor(pool, "a pool", 1)
        events.append("close")

    with lazy_stage_executor(start) as lazy:
        assert events == [] and not lazy.started
        first = current_executor()
        assert current_executor() is first and lazy.started
        assert first.submit(_double, 21).result() == 42
    assert events == ["start", "close"]
    assert current_executor() is None


def test_a_lazy_executor_nobody_asks_for_never_starts():
    def start():
        raise AssertionError("started")

    with lazy_stage_executor(start) as lazy:
        pass
    assert not lazy.started and current_executor() is None


def test_an_eager_executor_is_current_inside_and_gone_after():
    with ThreadPoolExecutor(1) as pool, stage_executor(pool, "threads", 3) as ex:
        assert current_executor() is ex and ex.slots == 3
    assert current_executor() is None


def _trim_state() -> tuple[bool, int]:
    import os

    from ferclean.memory import LOW_TRIM_ENV, undo_low_trim_threshold

    return LOW_TRIM_ENV in os.environ, undo_low_trim_threshold.cache_info().misses


@pytest.mark.slow  # starts a LocalCluster of one worker process
def test_tasks_on_a_dask_worker_undo_the_nannys_trim_threshold():
    pytest.importorskip("distributed")
    from ferclean.stage_executor import dask_stage_executor

    with dask_stage_executor(None, 1) as ex:
        raw = ex.executor.submit(_trim_state).result()  # straight onto the worker: nothing undone
        via = ex.submit(_trim_state).result()  # through StageExecutor.submit
    assert raw == (True, 0), "the nanny sets MALLOC_TRIM_THRESHOLD_ in its worker"
    assert via == (True, 1), "StageExecutor.submit undid it before the task"


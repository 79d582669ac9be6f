"""Process memory: hand freed memory back to the operating system, and keep glibc's malloc thresholds usual in
worker processes.

Arrow's allocator (mimalloc) keeps the pages of freed buffers for reuse, and glibc's malloc keeps freed
heap (torch's activation buffers of the embedding pass); neither shows up as live data, but both count in
the process's RSS. Measured on the 1 M OUT after two 4,096-crop embedding batches: 1,012 MB RSS, 770 MB
after releasing Arrow's unused pages, 693 MB after `malloc_trim(0)`. The dataset-issue search releases
between its phases and batches.

A Dask worker's nanny lowers glibc's trim threshold, which costs torch dearly (:func:`undo_low_trim_threshold`);
every task the stages send to a worker undoes it first (ferclean.stage_executor.on_worker, ferclean.shards).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import lru_cache

import pyarrow as pa


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def release_unused(heap: bool = True) -> None:
    """Release Arrow's unused pool pages and, with `heap`, trim glibc's malloc heap (no-op elsewhere)."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim() if heap else None
    if trim is not None:
        trim(0)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest (64-bit) value of its dynamic mmap threshold
LOW_TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"


@lru_cache(maxsize=1)
def undo_low_trim_threshold() -> bool:
    """Give glibc's malloc back the thresholds of a plain process when MALLOC_TRIM_THRESHOLD_ is set (once a
    process; returns whether it changed anything).

    Dask's nanny starts every worker with MALLOC_TRIM_THRESHOLD_=65536, which also fixes the mmap threshold at
    128 KB: each of torch's activation buffers is then mmapped and unmapped on every call. Measured on one
    1,808-crop faces part of the 10k OUT: 6.3 s of system CPU in a Dask worker against 0.2 s in a plain process
    (user 7.6 vs 5.9 s). With the mmap threshold at 32 MB and the trim threshold at 64 MB (what glibc's dynamic
    thresholds grow to) the buffers are reused; :func:`release_unused` still trims the heap after each batch.
    """
    import os

    if LOW_TRIM_ENV not in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # not glibc
        return False
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD))

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
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

import pyarrow as pa


@lru_cache(maxsize=None)
def _libc_function(fn: str) -> Callable[..., int] | None:
    """glibc's function `fn` (malloc_trim, mallopt), or None where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), fn) if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def release_unused(heap: bool = True) -> None:
    """Release Arrow's unused pool pages and, with `heap`, trim glibc's malloc heap (no-op elsewhere)."""
    pa.default_memory_pool().release_unused()
    trim = _libc_function("malloc_trim") if heap else None
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
    if LOW_TRIM_ENV not in os.environ:
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD))


POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


@contextmanager
def system_arrow_pool() -> Iterator[None]:
    """Arrow allocates from glibc's malloc (its system pool) inside this context, the previous default pool
    after; unchanged when the user chose a pool with ARROW_DEFAULT_MEMORY_POOL.

    Arrow's default pool (mimalloc) keeps pages that :func:`release_unused` does not give back, while glibc's
    heap is trimmed by it. Measured on the 100k relabel-collection OUT, the dataset-issue search run twice side by
    side: peak 1,163 MB with mimalloc against 1,103 MB with the system pool (the face-space fit pass no longer
    grows), the same CPU (406 / 404 user s); streaming the faces parts alone left RSS +126 MB against +32 MB.
    """
    if os.environ.get(POOL_ENV):
        yield
        return
    before = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(before)

"""Hand freed memory back to the operating system between the search's phases.

Arrow's allocator (mimalloc) keeps the pages of freed buffers for reuse, and glibc's malloc keeps freed
heap (torch's activation buffers of the embedding pass); neither shows up as live data, but both count in
the process's RSS. Measured on the 1 M OUT after two 4,096-crop embedding batches: 1,012 MB RSS, 770 MB
after releasing Arrow's unused pages, 693 MB after `malloc_trim(0)`.
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

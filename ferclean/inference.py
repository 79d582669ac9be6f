"""CPU inference settings for applying a trained model (the score stage, dataset-issue embeddings)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: images per forward pass: 128 was the fastest of 32/128/512 on CPU with channels-last memory
INFER_BATCH = 128


@contextmanager
def inference_settings(model: Any, threads: int | None = 1) -> Iterator[None]:
    """Channels-last weights and `threads` torch threads while scoring (threads restored after; None
    leaves torch's setting). On the shared 2-core benchmark machine, 1 thread + channels-last + 128 images
    a pass cost 2.1 ms of CPU per 48 px image against 5.9 ms with torch's defaults (2 threads, contiguous,
    512 a pass: the threads spin against the other processes); outputs differ by < 1e-6
    (benchmarks/results/million.md)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    model.net.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        torch.set_num_threads(before)

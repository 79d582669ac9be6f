"""Progress bars (rich) that switch off cleanly in tests, CI logs and worker processes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def progress_enabled(requested: bool = True) -> bool:
    """Bars only when asked, on a terminal, and not disabled by FERCLEAN_NO_PROGRESS=1."""
    return requested and sys.stderr.isatty() and os.environ.get("FERCLEAN_NO_PROGRESS") != "1"


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Iterate `items` with a progress bar (a plain iteration when bars are off)."""
    if not progress_enabled(enabled):
        yield from items
        return
    with make_progress() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)

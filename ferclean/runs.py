"""Run bookkeeping: run ids, the `runs` row, and the rejects buffer.

Use :func:`open_run` as a context manager around a unit of work. It yields a :class:`Run` that
collects counts and rejects; on exit it writes the `runs` row with status `completed`, or
`failed` with the error message when an exception escapes (the exception is re-raised), and
refreshes the DuckDB catalog.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import pyarrow as pa

from ferclean.store import Store

TRACKED_PACKAGES = (
    "ferclean", "prefect", "torch", "torchvision", "py-feat", "opencv-python", "dlib-bin",
    "pyarrow", "duckdb", "scikit-learn", "numpy", "cleanlab",
)


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id such as `20261122T054607Z-3fa9c1`."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class Run:
    """State of one run: id, config, counters and buffered rejects."""

    store: Store
    run_id: str
    kind: str
    config: dict[str, Any]
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    counts: Counter[str] = field(default_factory=Counter)
    _rejects: list[dict[str, Any]] = field(default_factory=list)
    flush_every: int = 10_000

    def reject(self, source_ref: str, stage: str, reason_code: str, message: str) -> None:
        """Record one rejected input item (written to the `rejects` table in batches)."""
        self._rejects.append(
            {
                "run_id": self.run_id,
                "source_ref": source_ref,
                "stage": stage,
                "reason_code": reason_code,
                "message": message,
                "created_at": datetime.now(UTC),
            }
        )
        self.counts[f"rejects.{stage}.{reason_code}"] += 1
        if len(self._rejects) >= self.flush_every:
            self.flush_rejects()

    def flush_rejects(self) -> None:
        if self._rejects:
            self.store.append("rejects", pa.Table.from_pylist(self._rejects), self.run_id)
            self._rejects = []

    @property
    def dir(self):  # noqa: ANN201
        """`OUT/runs/<run_id>/`: per-run files (plots, contact sheets, logs)."""
        return self.store.run_dir(self.run_id)

    def write_row(self, status: str, error: str | None = None) -> None:
        self.flush_rejects()
        row = {
            "run_id": self.run_id,
            "kind": self.kind,
            "started_at": self.started_at,
            "finished_at": datetime.now(UTC),
            "status": status,
            "config": json.dumps(self.config, default=str, sort_keys=True),
            "versions": json.dumps(package_versions(), sort_keys=True),
            "counts": json.dumps(dict(sorted(self.counts.items()))),
            "error": error,
        }
        self.store.append("runs", pa.Table.from_pylist([row]), self.run_id)


@contextmanager
def open_run(store: Store, kind: str, config: dict[str, Any], run_id: str | None = None) -> Iterator[Run]:
    """Context manager for one run; writes the `runs` row and refreshes the catalog on exit."""
    from ferclean.catalog import refresh_catalog

    run = Run(store=store, run_id=run_id or new_run_id(), kind=kind, config=config)
    store.root.mkdir(parents=True, exist_ok=True)
    try:
        yield run
    except KeyboardInterrupt:
        run.write_row("cancelled", "interrupted")
        refresh_catalog(store)
        raise
    except BaseException as exc:
        run.write_row("failed", f"{type(exc).__name__}: {exc}")
        refresh_catalog(store)
        raise
    else:
        run.write_row("completed")
        refresh_catalog(store)

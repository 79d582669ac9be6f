"""Wall and CPU seconds of the named phases of one dataset-issue search, written to a JSON file after each
phase, so that a run stopped part way (a 1 M search takes hours on a shared machine) still says where its
time and memory went."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PhaseClock:
    """`with clock.phase("name"): ...` adds the block's wall and CPU (user + sys of this process) seconds to
    `name` (a phase entered again accumulates; phases may nest, each counts its own block)."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}  # peak RSS of the process when the phase ended

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c
            self.peak_mb[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
            self.write()

    def as_dict(self) -> dict[str, dict[str, float]]:
        r = lambda d: {k: round(v, 3) for k, v in d.items()}
        return {"wall_s": r(self.wall), "cpu_s": r(self.cpu), "peak_rss_mb_at_end": r(self.peak_mb)}

    def write(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.as_dict(), indent=1))

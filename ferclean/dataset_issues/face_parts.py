"""The dataset-issue search's per-image work, faces part by faces part, in this process or on a task runner.

The per-image signals of the primary faces (crop pHashes, detection and quality evidence, the model's crop
embeddings: at 1M images the embeddings alone are ~1.8 ms CPU an image, most of the search) need nothing of the
rest of the collection (:func:`ferclean.dataset_issues.signals.face_part_signals`). :func:`gather_face_signals`
computes them per `faces` part (:func:`ferclean.primary.primary_face_parts`) and merges them into the
collection's :class:`~ferclean.dataset_issues.signals.Signals`:

- without an executor, in this process with the stage's embedder;
- with one (:func:`ferclean.stage_executor.current_executor`, e.g. the flows' Dask cluster under
  `--task-runner dask`), one task a part (:func:`face_part_task`): the worker reads its part from the Store
  (the store root and part key travel, not the crops; a remote cluster needs OUT on a shared file system),
  loads the embedder once per worker process (:func:`cached_embedder`) and sends back the part's signals.

Either way the parts are merged in reading order (a result that comes early waits for the ones before it), so
the output does not depend on the runner, and the batches are the same (`hash_batch` rows of one part), so
neither do the embeddings. At most `tasks_in_flight` results are submitted or waiting at a time (memory:
that many parts' signals; the embeddings go to disk through EmbeddingBlocks as they are merged).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferclean.dataset_issues.config import DatasetIssuesConfig
from ferclean.dataset_issues.embeddings import EmbeddingBlocks, load_embedder
from ferclean.dataset_issues.samples import SampleIndex
from ferclean.dataset_issues.signals import FacePartSignals, Signals, face_part_signals, merge_face_part
from ferclean.dataset_issues.task_map import map_tasks
from ferclean.model_dir import ModelDir
from ferclean.primary import iter_primary_faces, primary_face_parts
from ferclean.stage_executor import StageExecutor
from ferclean.store import Store

Embed = Callable[[Sequence[bytes]], np.ndarray]
HERE = "this process"


@dataclass
class FacePartResult:
    """What one task sends back: the part's signals batch by batch, and who computed them in how long."""

    part: str | None
    batches: list[FacePartSignals]
    pid: int
    wall_s: float
    cpu_s: float  # CPU seconds of the worker process during the task (its embedder load included)


@dataclass
class FaceSignalsRun:
    """How :func:`gather_face_signals` went: whether faces exist, where the per-part work ran."""

    has_faces: bool
    where: str = HERE
    parts: int = 0
    pids: list[int] = field(default_factory=list)  # processes that computed parts (sorted, distinct)
    worker_wall_s: float = 0.0  # summed over the tasks (0 in this process: the stage's phases time it)
    worker_cpu_s: float = 0.0


def part_face_signals(store: Store, part: str | None, cfg: DatasetIssuesConfig,
                      embed: Embed | None) -> Iterator[FacePartSignals]:
    """The signals of the primary faces of one `faces` part (None: the whole table), `hash_batch` rows at a time."""
    want_crops = cfg.hash_source in ("auto", "crop") or embed is not None
    cols = ["sample_id", "detector", "quality_flags"] + (["crop_png"] if want_crops else [])
    for t in iter_primary_faces(store, cols, batch_size=cfg.hash_batch, part=part):
        yield face_part_signals(t, cfg, embed)


_EMBEDDERS: dict[tuple, Embed | None] = {}


def _stamp(model_dir: str) -> tuple:
    """(mtime_ns, size) of the model's files, so a model retrained into the same folder is loaded again."""
    md = ModelDir(model_dir)
    out = []
    for p in (md.meta_path, md.network_path):
        try:
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def cached_embedder(model_dir: str, batch: int) -> Embed | None:
    """:func:`ferclean.dataset_issues.embeddings.load_embedder` once per process for a (model folder,
    embed_batch, model files' stamp); a new key replaces the one held (one model per worker at a time)."""
    key = (str(Path(model_dir).expanduser().resolve()), batch, _stamp(model_dir))
    if key not in _EMBEDDERS:
        _EMBEDDERS.clear()
        _EMBEDDERS[key] = load_embedder(model_dir, batch)
    return _EMBEDDERS[key]


def face_part_task(root: str, part: str | None, cfg: DatasetIssuesConfig, model_dir: str | None) -> FacePartResult:
    """One task on a worker: the signals of the faces part `part` of the Store at `root`, embedded with the model
    at `model_dir` (None: no embeddings)."""
    w, c = time.perf_counter(), time.process_time()
    embed = cached_embedder(model_dir, cfg.embed_batch) if model_dir else None
    batches = list(part_face_signals(Store(root), part, cfg, embed))
    return FacePartResult(part, batches, os.getpid(), time.perf_counter() - w, time.process_time() - c)


def gather_face_signals(store: Store, index: SampleIndex, sig: Signals, cfg: DatasetIssuesConfig,
                        embed: Embed | None, runner: StageExecutor | None = None,
                        model_dir: str | None = None) -> FaceSignalsRun:
    """Stream the primary faces part by part: detection/quality evidence, crop hashes, crop embeddings
    (:func:`ferclean.dataset_issues.signals.face_part_signals`), merged into `sig` in reading order
    (:func:`ferclean.dataset_issues.signals.merge_face_part`); embeddings into `sig.embedding`.

    In this process with `embed` when `runner` is None; else one :func:`face_part_task` a part on
    `runner.executor`, embedding with the model at `model_dir` (None: no embeddings; `embed` is not used).
    """
    parts = primary_face_parts(store)
    if not parts or store.count("faces") == 0:
        return FaceSignalsRun(False)
    sig.no_detection[:] = 1.0  # no face row at all = no face found
    embeds = embed is not None if runner is None else model_dir is not None
    blocks = EmbeddingBlocks(store.root) if embeds else None
    run = FaceSignalsRun(True, parts=len(parts))
    if runner is None:
        for part in parts:
            for batch in part_face_signals(store, part, cfg, embed):
                merge_face_part(sig, index, batch, blocks)
        run.pids = [os.getpid()]
    else:
        pids = set()
        args = lambda i: (str(store.root), parts[i], cfg, model_dir)
        for res in map_tasks(face_part_task, len(parts), args, runner, cfg.tasks_in_flight):
            for batch in res.batches:
                merge_face_part(sig, index, batch, blocks)
            pids.add(res.pid)
            run.worker_wall_s += res.wall_s
            run.worker_cpu_s += res.cpu_s
        run.where, run.pids = runner.description, sorted(pids)
    if blocks is not None and blocks.dim:
        sig.embedding = blocks
    return run

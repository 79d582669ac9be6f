"""`run_dataset_issues`: duplicates, conflicts, leaks, non-faces and outliers -> `dataset_issues`.

Every signal beyond the samples table is optional:
- samples only: exact duplicates (content_sha256), pHash near duplicates of the image files
  (mirrored copies too), blank images;
- + faces: pHash of the primary aligned crop (hash_source auto/crop), detection and quality
  evidence for not_a_face;
- + a trained model under OUT/model: embedding near duplicates, centroid outliers, and the
  embedding evidence for not_a_face.

The stage gathers the per-sample signals once (ferclean.dataset_issues.signals). The per-image work runs as
tasks, on the workers of the executor ferclean.stage_executor holds when the flows set one (`--task-runner
dask`; else here): crop pHashes, detection evidence and embeddings one task a faces part
(ferclean.dataset_issues.face_parts), file pHashes, HOG tests and the face space's image vectors one task a
chunk of files (ferclean.dataset_issues.task_map), merged in task order. Then the stage runs each
detector of ferclean.dataset_issues.detectors.ISSUE_MANAGERS (one class per issue type, same
`find(ctx)` method) and writes their rows. The samples are held as Arrow arrays and integer codes with
a hashed sample_id -> row index (ferclean.dataset_issues.samples; no Python object per sample), and the
wall / CPU seconds and peak RSS of each phase go to OUT/runs/<run_id>/dataset_issues_phases.json as the
search goes (ferclean.dataset_issues.phases).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ferclean.contracts import load_contract
from ferclean.dataset_issues.config import DatasetIssuesConfig
from ferclean.dataset_issues.detectors import ISSUE_MANAGERS, IssueContext
from ferclean.dataset_issues.embeddings import load_embedder
from ferclean.dataset_issues.face_parts import gather_face_signals
from ferclean.dataset_issues.issues import issues_table
from ferclean.dataset_issues.phases import PhaseClock
from ferclean.dataset_issues.phash import hash_images, iter_chunks
from ferclean.dataset_issues.samples import read_samples
from ferclean.dataset_issues.signals import Signals, assign_hashes
from ferclean.dataset_issues.task_map import map_tasks
from ferclean.memory import release_unused, system_arrow_pool
from ferclean.model_dir import ModelDir
from ferclean.progress import track
from ferclean.runs import Run
from ferclean.stage_executor import current_executor
from ferclean.store import Store

STAGE = "dataset_issues"
UNREADABLE = "decode_failed"  # reject reason code for an image file that cannot be decoded


def _rejects_allow() -> bool:
    """Whether the rejects contract accepts this stage and reason code (else unreadable images
    are only counted and listed in OUT/runs/<run_id>/dataset_issues_summary.json)."""
    contract = load_contract("rejects")
    stages, reasons = contract.column("stage").allowed, contract.column("reason_code").allowed
    return (stages is None or STAGE in stages) and (reasons is None or UNREADABLE in reasons)


def _clocked(embed: Callable[[Sequence[bytes]], np.ndarray] | None,
             clock: PhaseClock) -> Callable[[Sequence[bytes]], np.ndarray] | None:
    """`embed` with its calls timed as the phase "embed"."""
    if embed is None:
        return None

    def timed(crops: Sequence[bytes]) -> np.ndarray:
        with clock.phase("embed"):
            return embed(crops)

    return timed


def run_dataset_issues(store: Store, run: Run, config: DatasetIssuesConfig | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Find dataset-level issues and write the `dataset_issues` table (replacing earlier output).

    Returns a summary: counts of clusters / issues per type and timings (seconds). Arrow allocates from the
    system pool meanwhile (ferclean.memory.system_arrow_pool: what the search frees goes back to the OS).
    """
    with system_arrow_pool():
        return _run_dataset_issues(store, run, config, progress)


def _run_dataset_issues(store: Store, run: Run, config: DatasetIssuesConfig | None, progress: bool) -> dict[str, Any]:
    cfg = config or DatasetIssuesConfig()
    clock = PhaseClock(run.dir / "dataset_issues_phases.json")
    t0 = time.perf_counter()
    with clock.phase("read_samples"):
        samples = read_samples(store)  # Arrow arrays and codes, no Python object per sample
    n = samples.n
    sig = Signals(n)
    timings: dict[str, float] = {}

    with clock.phase("faces"):
        model_dir = ModelDir(cfg.model_dir) if cfg.model_dir else ModelDir.of_run(store.root)
        runner = current_executor()  # the flows' Dask cluster under --task-runner dask (ferclean.stage_executor)
        if runner is not None:  # one task a faces part on its workers, each loading the model once
            model = str(model_dir.path) if cfg.use_model and model_dir.exists() else None
            faces = gather_face_signals(store, samples.index, sig, cfg, None, runner, model)
        else:
            embed = load_embedder(model_dir, cfg.embed_batch) if cfg.use_model and store.count("faces") else None
            faces = gather_face_signals(store, samples.index, sig, cfg, _clocked(embed, clock))
            del embed  # the model and torch's freed activation buffers: handed back before the later phases
        release_unused()
    has_faces = faces.has_faces
    timings["faces_s"] = time.perf_counter() - t0

    # pHash of the image files for every sample not hashed from a crop
    t = time.perf_counter()
    with clock.phase("hash_images"):
        todo = np.flatnonzero(~sig.hashed) if cfg.hash_source != "crop" else np.zeros(0, np.int64)
        chunks = list(iter_chunks(len(todo), cfg.hash_batch))
        # a chunk of files a task: here, or on the runner's workers (the paths travel, the workers read the files)
        hashed = map_tasks(hash_images, len(chunks), lambda i: (samples.path_list(todo[chunks[i]]), cfg.mirror),
                           runner, cfg.tasks_in_flight)
        for sl, h in track(zip(chunks, hashed, strict=True), "pHash images", total=len(chunks), enabled=progress):
            assign_hashes(sig, todo[sl], h, from_crop=False)
        bad = todo[~sig.hashed[todo]]
        unreadable = samples.id_list(bad)
        run.counts[f"{STAGE}.{UNREADABLE}"] += len(unreadable)
        if _rejects_allow():
            for sid, path in zip(unreadable, samples.path_list(bad), strict=True):
                run.reject(sid, STAGE, UNREADABLE, f"cannot decode {path}")
        release_unused()
    timings["hash_s"] = time.perf_counter() - t

    ctx = IssueContext(store, cfg, samples, sig, has_faces, progress, clock, runner)
    parts: list[pa.Table] = []
    found: dict[str, int] = {}
    for i, manager in enumerate(ISSUE_MANAGERS):
        t = time.perf_counter()
        with clock.phase(manager.name):
            new = manager().find(ctx)
            # each phase's rows become Arrow columns at once (1M: 124 k near-duplicate rows are ~70 MB as dicts),
            # and the shared evidence no later detector needs is let go of (ferclean.dataset_issues.detectors)
            parts.append(issues_table(new, run.run_id))
            found[manager.name] = len(new)
            del new
            ctx.release({need for later in ISSUE_MANAGERS[i + 1:] for need in later.needs})
            # what the phase freed goes back to the OS before the next one allocates on top of it (1M: the
            # exact-duplicate grouping left +63 MB of freed heap in RSS, +4 MB after this)
            release_unused()
        timings[f"{manager.name}_s"] = time.perf_counter() - t
    cstats = ctx.cluster_stats

    table = pa.concat_tables(parts) if parts else issues_table([], run.run_id)
    store.write_part("dataset_issues", run.run_id, table)
    store.keep_only("dataset_issues", [run.run_id])

    types = table.column("issue_type").to_pylist()
    summary: dict[str, Any] = {
        "samples": n,
        "hashed": int(sig.hashed.sum()),
        "hashed_from_crop": int(sig.hash_from_crop.sum()),
        "faces_used": has_faces,
        "model_used": sig.embedding is not None,
        "clusters": cstats["clusters"],
        "samples_in_clusters": int(cstats["samples_in_clusters"]),
        "outliers": found.get("outliers", 0),
        "unreadable": len(unreadable),
        # where the per-image work (crop and file pHashes, embeddings, HOG tests) ran, like train's folds_trained_in
        "per_image_work_in": "this process" if runner is None else runner.description,
        "face_parts": faces.parts,
        "face_signals_pids": faces.pids,
        "face_signals_worker_cpu_s": round(faces.worker_cpu_s, 3),
        "face_signals_worker_wall_s": round(faces.worker_wall_s, 3),
        **{f"issues.{k}": types.count(k) for k in sorted(set(types))},
        **{f"phash.{k}": v for k, v in cstats["phash"].items()},
        **{k: round(v, 3) for k, v in timings.items()},
        "phases": clock.as_dict(),  # wall / CPU per phase (faces includes embed; not_a_face its face_space_*)
    }
    for k, v in summary.items():
        if isinstance(v, int | bool) and not isinstance(v, bool):
            run.counts[f"{STAGE}.{k}"] += v
    (run.dir / "dataset_issues_summary.json").write_text(
        json.dumps({**summary, "unreadable_sample_ids": unreadable[:10_000]}, indent=2))
    return summary

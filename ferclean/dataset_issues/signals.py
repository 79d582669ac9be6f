"""Per-sample evidence the dataset-issue detectors share: image/crop pHashes, face detection and
quality evidence, model embeddings (:class:`Signals`), the pHash duplicate edges and the
appearance evidence of undetected crops. Gathered once per run by the stage."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa

from ferclean.dataset_issues.clusters import group_pairs
from ferclean.dataset_issues.config import DatasetIssuesConfig
from ferclean.dataset_issues.embeddings import EmbeddingBlocks
from ferclean.dataset_issues.face_space import (
    FaceSpace,
    appearance_evidence,
    appearance_rank,
    crop_vectors,
    hog_detector,
    image_dffs,
    image_vectors,
    rotated_hog_score,
)
from ferclean.dataset_issues.neighbors import near_pairs_banded
from ferclean.dataset_issues.nonface import quality_evidence
from ferclean.dataset_issues.phases import PhaseClock
from ferclean.dataset_issues.phash import HASH_SIDE, hash_images, iter_chunks
from ferclean.dataset_issues.samples import SampleIndex, SampleTable
from ferclean.dataset_issues.task_map import map_tasks
from ferclean.memory import release_unused
from ferclean.primary import iter_primary_faces
from ferclean.progress import track
from ferclean.stage_executor import StageExecutor
from ferclean.store import Store

HASH_BITS = HASH_SIDE * HASH_SIDE
NO_DETECTOR = "fastlm"  # faces rows whose landmarks came without any detection
CROP_BATCH = 512  # primary crops a batch in the face-space passes


def _stable_unit(sample_ids: Sequence[str]) -> np.ndarray:
    """A deterministic pseudo-random number in [0, 1) per sample id (for sampling without state)."""
    return np.array([int(hashlib.blake2b(s.encode(), digest_size=8).hexdigest(), 16) / 2**64 for s in sample_ids])


def face_space_evidence(store: Store, samples: SampleTable, sig: Signals, cfg: DatasetIssuesConfig,
                        progress: bool, clock: PhaseClock | None = None,
                        runner: StageExecutor | None = None) -> dict[str, np.ndarray]:
    """Appearance evidence (see ferclean.dataset_issues.face_space) for the undetected primary crops.

    Rows no detector looked at (fastlm) first get dlib's HOG test of the faces stage (~2 ms each,
    `detect_unchecked`), so the evidence starts from a detection in both faces modes.
    Two streaming passes over `faces` (memory: one batch of crops): fit the face space on up to
    `face_space_fit_n` detected crops (all crops when fewer than 200 were detected), then DFFS of
    every undetected crop. The least face-like `hog_check_fraction` of them get the rotated HOG
    check on their source image. Returns arrays of length n: appearance (NaN = not scored),
    dffs, hog (NaN where not computed). clock: times face_space_detect / _fit / _dffs / _image / _hog.
    runner: the HOG tests and the image files' vectors run a chunk of `hash_batch` files a task on its workers
    (None: here).
    """
    clock = clock or PhaseClock()
    n = len(sig.phash)
    out = {k: np.full(n, np.nan) for k in ("appearance", "dffs", "dffs_image", "hog")}
    if not cfg.face_space:
        return out
    unchecked = np.flatnonzero(sig.has_face_row & np.isnan(sig.no_detection))  # fastlm rows: nothing detected them
    if len(unchecked) and cfg.detect_unchecked:
        with clock.phase("face_space_detect"):
            score = _hog_scores(unchecked, samples, cfg, "face detection", progress, (0.0,), runner)
            read = ~np.isnan(score)  # the faces stage's dlib test: a face at score >= 0
            found = score[read] >= 0.0
            sig.no_detection[unchecked[read]] = np.where(found, 0.0, 1.0)
            sig.detected[unchecked[read]] = found
            release_unused()  # the HOG chunks' freed buffers, before the streaming passes
    undetected = sig.has_face_row & ~sig.detected
    if undetected.sum() < 2:
        return out
    cols = ["sample_id", "crop_png"]
    fit_pool = sig.detected if sig.detected.sum() >= 200 else sig.has_face_row
    share = min(1.0, cfg.face_space_fit_n / max(int(fit_pool.sum()), 1))

    def picked(pick: Callable[[np.ndarray, list[str]], np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(sample rows, crop vectors) of the decodable primary crops `pick` selects, batch by batch."""
        # 512 crops a batch: with the store's buffered stream, the crop stream of the 1M OUT peaked 73-90 MB above its
        # start, against 254 MB in 4,096-row batches read whole (docs/scaling.md, session 10)
        for t in iter_primary_faces(store, cols, batch_size=min(cfg.hash_batch, CROP_BATCH)):
            sids = t.column("sample_id").to_pylist()
            rows = samples.index.rows(t.column("sample_id"))
            want = np.flatnonzero((rows >= 0) & pick(np.maximum(rows, 0), sids))
            if not len(want):
                continue
            vecs, ok = crop_vectors(t.column("crop_png").take(pa.array(want)).to_pylist(), cfg.face_space_side)
            del t
            # Arrow's pool keeps each batch's freed crop buffers: streaming the 25 faces parts of a 100k OUT raised
            # RSS by 405 MB without this, 190 MB with it (the 1M search's face-space fit: +380 MB)
            release_unused(heap=False)
            yield rows[want][ok], vecs[ok]

    # two streaming passes, memory bounded by the fit sample: the earlier single pass kept a 24x24 vector
    # of every undetected crop (2.3 KB a row; all crops of a fastlm collection) and of its image
    with clock.phase("face_space_fit"):
        fit_rows, fit_vecs = [], []
        for r, v in picked(lambda rows, sids: fit_pool[rows] & (_stable_unit(sids) < share)):
            fit_rows.append(r)
            fit_vecs.append(v)
        fit_rows = np.concatenate(fit_rows) if fit_rows else np.zeros(0, np.int64)
        if len(fit_rows) < 2:
            return out
        space = FaceSpace(cfg.face_space_k).fit(np.concatenate(fit_vecs))
        del fit_vecs
        release_unused()
    with clock.phase("face_space_dffs"):
        todo = [(r, space.dffs(v)) for r, v in picked(lambda rows, sids: undetected[rows])]
        idx = np.concatenate([r for r, _ in todo]) if todo else np.zeros(0, np.int64)
    if len(idx) < 2:
        return out
    out["dffs"][idx] = np.concatenate([d for _, d in todo])
    # the same on the whole image, independent of where the landmark fit put the eyes
    with clock.phase("face_space_image"):  # the files decoded a chunk a task, here or on the runner's workers
        side = cfg.face_space_side
        fit_chunks = list(iter_chunks(len(fit_rows), cfg.hash_batch))
        fit_parts = list(map_tasks(image_vectors, len(fit_chunks), lambda i: (samples.path_list(fit_rows[fit_chunks[i]]),
                                   side), runner, cfg.tasks_in_flight))
        img_fit = np.concatenate([v for v, _ in fit_parts])
        ok_fit = np.concatenate([ok for _, ok in fit_parts])
        del fit_parts
        dffs_image = np.full(n, np.nan)
        if ok_fit.sum() >= 2:
            image_space = FaceSpace(cfg.face_space_k).fit(img_fit[ok_fit])
            chunks = list(iter_chunks(len(idx), cfg.hash_batch))
            scores = map_tasks(image_dffs, len(chunks), lambda i: (samples.path_list(idx[chunks[i]]), image_space, side),
                               runner, cfg.tasks_in_flight)
            for sl, d in zip(chunks, scores, strict=True):
                dffs_image[idx[sl]] = d
    out["dffs_image"] = dffs_image
    n_check = round(cfg.hog_check_fraction * len(idx))
    if n_check:
        with clock.phase("face_space_hog"):
            prelim = appearance_rank(out["dffs"][idx], dffs_image[idx])
            suspects = idx[np.argsort(-prelim, kind="stable")[:n_check]]
            out["hog"][suspects] = _hog_scores(suspects, samples, cfg, "face check", progress, None, runner)
    # all three cues exist on the checked rows; the rest are the most face-like 90 % by DFFS
    out["appearance"][idx] = 0.0
    checked = idx[~np.isnan(out["hog"][idx])]
    if len(checked) >= 2:
        top = min(0.5, cfg.nonface_top_fraction / max(cfg.hog_check_fraction, 1e-9))
        out["appearance"][checked] = appearance_evidence(
            appearance_rank(out["dffs"][checked], dffs_image[checked], -out["hog"][checked]), top)
    return out


class Signals:
    """Per-sample arrays gathered from images, faces and the model (length n = samples)."""

    def __init__(self, n: int):
        self.phash = np.zeros(n, np.uint64)
        self.mirror = np.zeros(n, np.uint64)
        self.pixel_std = np.full(n, np.nan)
        self.hashed = np.zeros(n, bool)
        self.hash_from_crop = np.zeros(n, bool)
        self.no_detection = np.full(n, np.nan)
        self.detected = np.zeros(n, bool)  # a face detector confirmed the primary face
        self.has_face_row = np.zeros(n, bool)
        # quality evidence of the primary face's flags (nonface.quality_evidence; NaN = no face row): one
        # float a sample instead of the earlier list of flags per sample
        self.quality = np.full(n, np.nan)
        self.embedding: EmbeddingBlocks | None = None  # model embeddings, on disk block by block


def assign_hashes(sig: Signals, idx: np.ndarray, hashed: tuple, from_crop: bool) -> None:
    """Write a :func:`ferclean.dataset_issues.phash.hash_images` result into the rows `idx` of `sig`."""
    h, std, _, m, ok = hashed
    sig.phash[idx] = h
    sig.pixel_std[idx] = np.where(ok, std, np.nan)
    if m is not None:
        sig.mirror[idx] = m
    sig.hashed[idx] = ok
    sig.hash_from_crop[idx] = ok & from_crop


@dataclass
class FacePartSignals:
    """The per-image signals of one batch (or one part) of primary faces, aligned with `sample_ids`: what a task
    runner could compute per faces part on any worker and send back (a few dozen bytes a face plus its
    embedding); :func:`merge_face_part` puts them into the whole collection's :class:`Signals`."""

    sample_ids: pa.Array
    no_detection: np.ndarray  # 1 full_frame, NaN fastlm (nothing detected it), 0 a detector found the face
    detected: np.ndarray  # bool
    quality: np.ndarray  # nonface.quality_evidence of the quality flags
    hashes: tuple | None  # hash_images(crops) when the crops are hashed
    embedding: np.ndarray | None  # (k, d) float32 when a model embeds them


def face_part_signals(t: pa.Table, cfg: DatasetIssuesConfig,
                      embed: Callable[[Sequence[bytes]], np.ndarray] | None) -> FacePartSignals:
    """Per-image signals of a table of primary faces (sample_id, detector, quality_flags[, crop_png]); needs
    nothing of the rest of the collection."""
    det = t.column("detector").to_pylist()
    flags = t.column("quality_flags").to_pylist()
    # fastlm rows: no detector ran; the rotated HOG check of face_space decides for the suspects
    no_detection = np.array([1.0 if d == "full_frame" else (np.nan if d == NO_DETECTOR else 0.0) for d in det],
                            np.float64)
    detected = np.array([d not in ("full_frame", NO_DETECTOR) for d in det], bool)
    quality = quality_evidence([list(f or []) for f in flags])
    hashes = emb = None
    if "crop_png" in t.column_names and (cfg.hash_source in ("auto", "crop") or embed is not None):
        crops = t.column("crop_png").to_pylist()
        release_unused(heap=False)  # the batch's decoded Arrow buffers, before the model's pass
        if cfg.hash_source in ("auto", "crop"):
            hashes = hash_images(crops, mirror=cfg.mirror)
        if embed is not None:
            emb = embed(crops)
            release_unused()  # torch's freed activations (peak 1,116 -> 1,053 MB over four batches of the 1M OUT)
    return FacePartSignals(t.column("sample_id").combine_chunks(), no_detection, detected, quality, hashes, emb)


def merge_face_part(sig: Signals, index: SampleIndex, part: FacePartSignals, blocks: EmbeddingBlocks | None) -> None:
    """Put one part's signals into the rows of its samples (faces of ids that are not samples are skipped)."""
    rows = index.rows(part.sample_ids)
    keep = np.flatnonzero(rows >= 0)
    if not len(keep):
        return
    idx = rows[keep]
    sig.no_detection[idx] = part.no_detection[keep]
    sig.detected[idx] = part.detected[keep]
    sig.has_face_row[idx] = True
    sig.quality[idx] = part.quality[keep]
    if part.hashes is not None:
        assign_hashes(sig, idx, tuple(None if x is None else x[keep] for x in part.hashes), from_crop=True)
    if blocks is not None and part.embedding is not None:
        blocks.add(idx, part.embedding[keep])


def phash_edges(sig: Signals, cfg: DatasetIssuesConfig) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Duplicate edges from pHashes: identical hashes, banded near pairs, mirrored pairs.

    Returns (pairs (m, 2) sample indices, similarity (m,), method per edge, stats).
    """
    ok = np.flatnonzero(sig.hashed)
    uniq, first, inverse = np.unique(sig.phash[ok], return_index=True, return_inverse=True)
    rep = ok[first]  # a representative sample per distinct hash
    same = ok[group_pairs(inverse)] if len(ok) else np.zeros((0, 2), np.int64)
    pairs, dist, stats = near_pairs_banded(uniq, cfg.max_hamming)
    edges = [same, rep[pairs]]
    sims = [np.ones(len(same)), 1.0 - dist / HASH_BITS]
    methods = ["phash"] * (len(same) + len(pairs))
    stats = {"distinct_hashes": len(uniq), "candidates": stats["candidates"], "phash_pairs": len(pairs)}
    if cfg.mirror and len(ok):
        muniq, mfirst = np.unique(sig.mirror[ok], return_index=True)
        both = np.concatenate([uniq, muniq])
        mp, md, mstats = near_pairs_banded(both, cfg.max_hamming)
        cross = (mp[:, 0] < len(uniq)) & (mp[:, 1] >= len(uniq))
        a, b = rep[mp[cross, 0]], ok[mfirst[mp[cross, 1] - len(uniq)]]
        real = a != b  # an image matching its own mirror is symmetric, not a duplicate
        edges.append(np.stack([a[real], b[real]], 1))
        sims.append(1.0 - md[cross][real] / HASH_BITS)
        methods += ["phash_mirror"] * int(real.sum())
        stats["mirror_pairs"] = int(real.sum())
        stats["candidates"] += mstats["candidates"]
    return np.concatenate(edges).astype(np.int64), np.concatenate(sims), methods, stats


def edge_summary(cluster: np.ndarray, edges: np.ndarray, sims: np.ndarray, methods: list[str],
                 cluster_ids: dict[int, str]) -> dict[str, dict]:
    """cluster_id -> {"min_similarity", "methods", "max_hamming"} over the edges inside it."""
    out: dict[str, dict] = {}
    lab = cluster[edges[:, 0]] if len(edges) else np.zeros(0, np.int64)
    for c, s, m in zip(lab.tolist(), sims.tolist(), methods, strict=True):
        cid = cluster_ids.get(c)
        if cid is None:
            continue
        info = out.setdefault(cid, {"min_similarity": 1.0, "methods": set(), "max_hamming": None})
        info["min_similarity"] = min(info["min_similarity"], s)
        info["methods"].add(m)
        if m.startswith("phash"):
            d = round((1.0 - s) * HASH_BITS)
            info["max_hamming"] = d if info["max_hamming"] is None else max(info["max_hamming"], d)
    for info in out.values():
        info["methods"] = sorted(info["methods"])
        info["min_similarity"] = round(float(info["min_similarity"]), 6)
    return out


def hog_scores(paths: Sequence[str], angles: tuple[float, ...] | None = None) -> np.ndarray:
    """dlib HOG's best score (:func:`rotated_hog_score`) on each image file, NaN where it cannot be read (a task:
    one chunk of paths, on any worker that sees the files)."""
    detector = hog_detector()
    kw = {} if angles is None else {"angles": angles}
    out = np.full(len(paths), np.nan)
    for j, path in enumerate(paths):
        img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if img is not None:
            out[j] = rotated_hog_score(img, detector, **kw)
    return out


def _hog_scores(rows: np.ndarray, samples: SampleTable, cfg: DatasetIssuesConfig, label: str, progress: bool,
                angles: tuple[float, ...] | None = None, runner: StageExecutor | None = None) -> np.ndarray:
    """:func:`hog_scores` of each row's image file, `hash_batch` paths a task, here or on `runner`; the paths a
    chunk at a time (Python strings of the chunks in flight, not of every row)."""
    out = np.full(len(rows), np.nan)
    chunks = list(iter_chunks(len(rows), cfg.hash_batch))
    scores = map_tasks(hog_scores, len(chunks), lambda i: (samples.path_list(rows[chunks[i]]), angles), runner,
                       cfg.tasks_in_flight)
    for sl, s in track(zip(chunks, scores, strict=True), label, total=len(chunks), enabled=progress):
        out[sl] = s
    return out

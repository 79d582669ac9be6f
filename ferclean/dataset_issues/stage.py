"""`run_dataset_issues`: duplicates, conflicts, leaks, non-faces and outliers -> `dataset_issues`.

Every signal beyond the samples table is optional:
- samples only: exact duplicates (content_sha256), pHash near duplicates of the image files
  (mirrored copies too), blank images;
- + faces: pHash of the primary aligned crop (hash_source auto/crop), detection and quality
  evidence for not_a_face;
- + a trained model under OUT/model: embedding near duplicates, centroid outliers, and the
  embedding evidence for not_a_face.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ferclean.contracts import load_contract
from ferclean.dataset_issues.clusters import analyze_clusters, group_pairs, union_clusters
from ferclean.dataset_issues.config import DatasetIssuesConfig
from ferclean.dataset_issues.embeddings import (
    centroid_distances,
    cosine_pairs_blocked,
    load_embedder,
    robust_z,
)
from ferclean.dataset_issues.face_space import (
    FaceSpace,
    appearance_evidence,
    appearance_rank,
    crop_vectors,
    hog_detector,
    image_vectors,
    rotated_hog_score,
)
from ferclean.dataset_issues.issues import cluster_issue_rows, issues_table, sample_issue_rows
from ferclean.dataset_issues.neighbors import near_pairs_banded
from ferclean.dataset_issues.nonface import blank_evidence, embedding_evidence, nonface_score, quality_evidence
from ferclean.dataset_issues.phash import HASH_SIDE, hash_images, iter_chunks
from ferclean.model_dir import ModelDir
from ferclean.primary import iter_primary_faces
from ferclean.progress import track
from ferclean.runs import Run
from ferclean.store import Store

STAGE = "dataset_issues"
UNREADABLE = "decode_failed"  # reject reason code for an image file that cannot be decoded
HASH_BITS = HASH_SIDE * HASH_SIDE
NO_DETECTOR = "fastlm"  # faces rows whose landmarks came without any detection


def _stable_unit(sample_ids: Sequence[str]) -> np.ndarray:
    """A deterministic pseudo-random number in [0, 1) per sample id (for sampling without state)."""
    return np.array([int(hashlib.blake2b(s.encode(), digest_size=8).hexdigest(), 16) / 2**64 for s in sample_ids])


def face_space_evidence(store: Store, pos: dict[str, int], sig: Signals, cfg: DatasetIssuesConfig,
                        paths: Sequence[str], progress: bool) -> dict[str, np.ndarray]:
    """Appearance evidence (see ferclean.dataset_issues.face_space) for the undetected primary crops.

    Rows no detector looked at (fastlm) first get dlib's HOG test of the faces stage (~2 ms each,
    `detect_unchecked`), so the evidence starts from a detection in both faces modes.
    Two streaming passes over `faces` (memory: one batch of crops): fit the face space on up to
    `face_space_fit_n` detected crops (all crops when fewer than 200 were detected), then DFFS of
    every undetected crop. The least face-like `hog_check_fraction` of them get the rotated HOG
    check on their source image. Returns arrays of length n: appearance (NaN = not scored),
    dffs, hog (NaN where not computed).
    """
    n = len(sig.phash)
    out = {k: np.full(n, np.nan) for k in ("appearance", "dffs", "dffs_image", "hog")}
    if not cfg.face_space:
        return out
    unchecked = np.flatnonzero(sig.has_face_row & np.isnan(sig.no_detection))  # fastlm rows: nothing detected them
    if len(unchecked) and cfg.detect_unchecked:
        detector = hog_detector()
        for i in track(unchecked, "face detection", total=len(unchecked), enabled=progress):
            img = cv2.imread(paths[i], cv2.IMREAD_GRAYSCALE)
            if img is None:
                continue
            found = rotated_hog_score(img, detector, angles=(0.0,)) >= 0.0  # the faces stage's dlib test
            sig.no_detection[i] = 0.0 if found else 1.0
            sig.detected[i] = found
    undetected = sig.has_face_row & ~sig.detected
    if undetected.sum() < 2:
        return out
    cols = ["sample_id", "crop_png"]
    fit_pool = sig.detected if sig.detected.sum() >= 200 else sig.has_face_row
    share = min(1.0, cfg.face_space_fit_n / max(int(fit_pool.sum()), 1))
    fit_rows, fit_vecs, todo_idx, todo_vecs = [], [], [], []
    for t in iter_primary_faces(store, cols, batch_size=cfg.hash_batch):
        sids = t.column("sample_id").to_pylist()
        rows = np.array([pos.get(x, -1) for x in sids])
        ok_row = rows >= 0
        pick_fit = ok_row & fit_pool[np.maximum(rows, 0)] & (_stable_unit(sids) < share)
        pick_dffs = ok_row & undetected[np.maximum(rows, 0)]
        want = np.flatnonzero(pick_fit | pick_dffs)
        if not len(want):
            continue
        crops = t.column("crop_png").take(pa.array(want)).to_pylist()
        vecs, ok = crop_vectors(crops, cfg.face_space_side)
        for j, k in enumerate(want):
            if not ok[j]:
                continue
            if pick_fit[k]:
                fit_rows.append(rows[k])
                fit_vecs.append(vecs[j])
            if pick_dffs[k]:
                todo_idx.append(rows[k])
                todo_vecs.append(vecs[j])
    if len(fit_vecs) < 2 or len(todo_idx) < 2:
        return out
    idx = np.asarray(todo_idx)
    out["dffs"][idx] = FaceSpace(cfg.face_space_k).fit(np.stack(fit_vecs)).dffs(np.stack(todo_vecs))
    # the same on the whole image, independent of where the landmark fit put the eyes
    img_fit, ok_fit = image_vectors([paths[i] for i in fit_rows], cfg.face_space_side)
    img_todo, ok_todo = image_vectors([paths[i] for i in idx], cfg.face_space_side)
    dffs_image = np.full(n, np.nan)
    if ok_fit.sum() >= 2:
        dffs_image[idx[ok_todo]] = FaceSpace(cfg.face_space_k).fit(img_fit[ok_fit]).dffs(img_todo[ok_todo])
    out["dffs_image"] = dffs_image
    n_check = int(round(cfg.hog_check_fraction * len(idx)))
    if n_check:
        detector = hog_detector()
        prelim = appearance_rank(out["dffs"][idx], dffs_image[idx])
        suspects = idx[np.argsort(-prelim, kind="stable")[:n_check]]
        for i in track(suspects, "face check", total=len(suspects), enabled=progress):
            img = cv2.imread(paths[i], cv2.IMREAD_GRAYSCALE)
            if img is None:
                continue
            out["hog"][i] = rotated_hog_score(img, detector)
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
        self.flags: list[list[str] | None] = [None] * n
        self.embedding: np.ndarray | None = None


def _store_hashes(sig: Signals, idx: np.ndarray, sources: list, cfg: DatasetIssuesConfig, from_crop: bool) -> None:
    h, std, _, m, ok = hash_images(sources, mirror=cfg.mirror)
    sig.phash[idx] = h
    sig.pixel_std[idx] = np.where(ok, std, np.nan)
    if m is not None:
        sig.mirror[idx] = m
    sig.hashed[idx] = ok
    sig.hash_from_crop[idx] = ok & from_crop


def gather_face_signals(store: Store, pos: dict[str, int], sig: Signals, cfg: DatasetIssuesConfig,
                        embed: Callable[[Sequence[bytes]], np.ndarray] | None) -> bool:
    """Stream the primary faces: detection/quality evidence, crop hashes, crop embeddings.

    Returns True when the faces table has rows. Memory: one batch of crops at a time.
    """
    if store.count("faces") == 0:
        return False
    sig.no_detection[:] = 1.0  # no face row at all = no face found
    want_crops = cfg.hash_source in ("auto", "crop") or embed is not None
    cols = ["sample_id", "detector", "quality_flags"] + (["crop_png"] if want_crops else [])
    emb_idx, emb_parts = [], []
    for t in iter_primary_faces(store, cols, batch_size=cfg.hash_batch):
        sids = t.column("sample_id").to_pylist()
        rows = [pos.get(s, -1) for s in sids]
        keep = [k for k, r in enumerate(rows) if r >= 0]
        if not keep:
            continue
        idx = np.array([rows[k] for k in keep])
        det = t.column("detector").to_pylist()
        flags = t.column("quality_flags").to_pylist()
        for k, r in zip(keep, idx, strict=True):
            # fastlm rows: no detector ran; the rotated HOG check of face_space decides for the suspects
            sig.no_detection[r] = 1.0 if det[k] == "full_frame" else (np.nan if det[k] == NO_DETECTOR else 0.0)
            sig.detected[r] = det[k] not in ("full_frame", NO_DETECTOR)
            sig.has_face_row[r] = True
            sig.flags[r] = list(flags[k] or [])
        if want_crops:
            crops = t.column("crop_png").to_pylist()
            crops = [crops[k] for k in keep]
            if cfg.hash_source in ("auto", "crop"):
                _store_hashes(sig, idx, crops, cfg, from_crop=True)
            if embed is not None:
                emb_idx.append(idx)
                emb_parts.append(embed(crops))
    if emb_parts:
        dim = emb_parts[0].shape[1]
        sig.embedding = np.full((len(sig.phash), dim), np.nan, np.float32)
        sig.embedding[np.concatenate(emb_idx)] = np.concatenate(emb_parts)
    return True


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
    stats = {"distinct_hashes": int(len(uniq)), "candidates": stats["candidates"], "phash_pairs": int(len(pairs))}
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
            d = int(round((1.0 - s) * HASH_BITS))
            info["max_hamming"] = d if info["max_hamming"] is None else max(info["max_hamming"], d)
    for info in out.values():
        info["methods"] = sorted(info["methods"])
        info["min_similarity"] = round(float(info["min_similarity"]), 6)
    return out


def _rejects_allow() -> bool:
    """Whether the rejects contract accepts this stage and reason code (else unreadable images
    are only counted and listed in OUT/runs/<run_id>/dataset_issues_summary.json)."""
    contract = load_contract("rejects")
    stages, reasons = contract.column("stage").allowed, contract.column("reason_code").allowed
    return (stages is None or STAGE in stages) and (reasons is None or UNREADABLE in reasons)


def run_dataset_issues(store: Store, run: Run, config: DatasetIssuesConfig | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Find dataset-level issues and write the `dataset_issues` table (replacing earlier output).

    Returns a summary: counts of clusters / issues per type and timings (seconds).
    """
    cfg = config or DatasetIssuesConfig()
    t0 = time.perf_counter()
    samples = store.read("samples", columns=["sample_id", "source_path", "content_sha256", "split",
                                              "label_original", "width", "height"])
    n = samples.num_rows
    sids = samples.column("sample_id").to_pylist()
    pos = {s: i for i, s in enumerate(sids)}
    sig = Signals(n)
    timings: dict[str, float] = {}

    model_dir = ModelDir(cfg.model_dir) if cfg.model_dir else ModelDir.of_run(store.root)
    embed = load_embedder(model_dir, cfg.embed_batch) if cfg.use_model and store.count("faces") else None
    has_faces = gather_face_signals(store, pos, sig, cfg, embed)
    timings["faces_s"] = time.perf_counter() - t0

    # pHash of the image files for every sample not hashed from a crop
    t = time.perf_counter()
    todo = np.flatnonzero(~sig.hashed) if cfg.hash_source != "crop" else np.zeros(0, np.int64)
    paths = samples.column("source_path").to_pylist()
    chunks = list(iter_chunks(len(todo), cfg.hash_batch))
    for sl in track(chunks, "pHash images", total=len(chunks), enabled=progress):
        idx = todo[sl]
        _store_hashes(sig, idx, [paths[i] for i in idx], cfg, from_crop=False)
    unreadable = [sids[i] for i in todo[~sig.hashed[todo]]]
    run.counts[f"{STAGE}.{UNREADABLE}"] += len(unreadable)
    if _rejects_allow():
        for sid in unreadable:
            run.reject(sid, STAGE, UNREADABLE, f"cannot decode {paths[pos[sid]]}")
    timings["hash_s"] = time.perf_counter() - t

    # duplicate edges -> clusters
    t = time.perf_counter()
    shas = samples.column("content_sha256").to_pylist()
    sha_edges = group_pairs(np.asarray(shas, dtype=object).astype(str)) if n else np.zeros((0, 2), np.int64)
    edges, sims, methods, hstats = phash_edges(sig, cfg)
    edges = np.concatenate([sha_edges, edges])
    sims = np.concatenate([np.ones(len(sha_edges)), sims])
    methods = ["sha256"] * len(sha_edges) + methods
    emb_ok = None
    if sig.embedding is not None:
        emb_ok = np.flatnonzero(~np.isnan(sig.embedding).any(axis=1))
        # centre: backbone features are often all >= 0 (ReLU), making every raw cosine ~1
        sig.embedding[emb_ok] -= sig.embedding[emb_ok].mean(axis=0)
        if cfg.embed_duplicates and 0 < len(emb_ok) <= cfg.embed_max_n:
            ep, es = cosine_pairs_blocked(sig.embedding[emb_ok], cfg.embed_cosine_min)
            edges = np.concatenate([edges, emb_ok[ep]])
            sims = np.concatenate([sims, es])
            methods += ["embedding"] * len(ep)
    cluster = union_clusters(n, edges)
    splits = samples.column("split").to_pylist()
    labels = samples.column("label_original").to_pylist()
    areas = pc.multiply(samples.column("width").cast(pa.int64()), samples.column("height").cast(pa.int64())).to_pylist()
    reports = analyze_clusters(cluster, sids, splits, labels, shas, areas)
    label_of = {r.cluster_id: int(cluster[pos[r.members[0]]]) for r in reports}
    cid_of = {v: k for k, v in label_of.items()}
    rows = cluster_issue_rows(reports, edge_summary(cluster, edges, sims, methods, cid_of))
    timings["duplicates_s"] = time.perf_counter() - t

    # not_a_face and outliers
    t = time.perf_counter()
    blank = blank_evidence(sig.pixel_std, cfg.blank_std_lo, cfg.blank_std_hi)
    quality = quality_evidence(sig.flags)
    emb_far = np.full(n, np.nan)
    n_outliers = 0
    if sig.embedding is not None and emb_ok is not None and len(emb_ok) >= 3:
        classes = sorted({x for x in labels if x is not None})
        cidx = np.array([classes.index(labels[i]) if labels[i] is not None else -1 for i in emb_ok])
        own, nearest = centroid_distances(sig.embedding[emb_ok], cidx, max(1, len(classes)))
        emb_far[emb_ok] = embedding_evidence(robust_z(nearest), cfg.outlier_z)
        lab = cidx >= 0
        z_own = np.full(len(emb_ok), np.nan)
        z_own[lab] = robust_z(own[lab], cidx[lab])
        out = np.flatnonzero(z_own > cfg.outlier_z)
        rows += sample_issue_rows(
            "outlier", [sids[emb_ok[k]] for k in out], [own[k] / 2 for k in out],
            [{"label": labels[emb_ok[k]], "centroid_distance": round(float(own[k]), 5),
              "robust_z": round(float(z_own[k]), 3)} for k in out])
        n_outliers = len(out)
    fs = face_space_evidence(store, pos, sig, cfg, paths, progress) if has_faces else \
        {k: np.full(n, np.nan) for k in ("appearance", "dffs", "dffs_image", "hog")}
    nf = nonface_score(blank, sig.no_detection, quality, emb_far,
                       cfg.w_no_detection, cfg.w_quality, cfg.w_embedding, fs["appearance"], cfg.w_appearance)
    flagged = np.flatnonzero(nf >= cfg.nonface_threshold)

    def comp(x: np.ndarray, i: int) -> float | None:
        return None if np.isnan(x[i]) else round(float(x[i]), 4)

    rows += sample_issue_rows(
        "not_a_face", [sids[i] for i in flagged], nf[flagged].tolist(),
        [{"blank": comp(blank, i), "no_detection": comp(sig.no_detection, i), "quality": comp(quality, i),
          "embedding": comp(emb_far, i), "appearance": comp(fs["appearance"], i), "dffs": comp(fs["dffs"], i),
          "dffs_image": comp(fs["dffs_image"], i),
          "hog_best": comp(fs["hog"], i), "pixel_std": comp(sig.pixel_std, i)} for i in flagged])
    timings["nonface_s"] = time.perf_counter() - t

    table = issues_table(rows, run.run_id)
    store.write_part("dataset_issues", run.run_id, table)
    store.keep_only("dataset_issues", [run.run_id])

    types = table.column("issue_type").to_pylist()
    summary: dict[str, Any] = {
        "samples": n,
        "hashed": int(sig.hashed.sum()),
        "hashed_from_crop": int(sig.hash_from_crop.sum()),
        "faces_used": has_faces,
        "model_used": sig.embedding is not None,
        "clusters": len(reports),
        "samples_in_clusters": int(sum(len(r.members) for r in reports)),
        "outliers": n_outliers,
        "unreadable": len(unreadable),
        **{f"issues.{k}": types.count(k) for k in sorted(set(types))},
        **{f"phash.{k}": v for k, v in hstats.items()},
        **{k: round(v, 3) for k, v in timings.items()},
    }
    for k, v in summary.items():
        if isinstance(v, int | bool) and not isinstance(v, bool):
            run.counts[f"{STAGE}.{k}"] += v
    (run.dir / "dataset_issues_summary.json").write_text(
        json.dumps({**summary, "unreadable_sample_ids": unreadable[:10_000]}, indent=2))
    return summary

"""Embedding maths for near duplicates and outliers (pure numpy), plus the optional model call.

Embeddings come from the trained model (``ferclean.train.score``) when it exists; every function
here takes plain arrays so it is testable without a model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ferclean.model_dir import ModelDir


def l2_normalize(emb: np.ndarray) -> np.ndarray:
    """(n, d) float -> rows of unit length (zero rows stay zero), float32."""
    e = np.asarray(emb, dtype=np.float32)
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.where(norm > 0, norm, 1.0)


def robust_z(x: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """(x - median) / (1.4826 * MAD), within each group (all one group when groups is None).

    A group whose MAD is 0 uses the mean absolute deviation, and 1 if that is 0 too.
    """
    x = np.asarray(x, dtype=np.float64)
    g = np.zeros(len(x), dtype=np.int64) if groups is None else np.asarray(groups)
    out = np.zeros(len(x))
    for key in np.unique(g):
        m = g == key
        med = np.median(x[m])
        mad = 1.4826 * np.median(np.abs(x[m] - med))
        if mad <= 0:
            mad = float(np.mean(np.abs(x[m] - med))) or 1.0
        out[m] = (x[m] - med) / mad
    return out


def centroid_distances(emb: np.ndarray, label_idx: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances to class centroids.

    emb: (n, d); label_idx: (n,) int in 0..n_classes-1, or -1 for unlabelled (left out of the
    centroids). Returns (own (n,) distance to the sample's own class centroid, NaN when
    unlabelled; nearest (n,) distance to the closest centroid). Distances are 1 - cos in [0, 2].
    """
    emb = np.asarray(emb, dtype=np.float32)
    blocks = lambda: iter([(np.arange(len(emb)), emb)])
    _, own, nearest = centroid_distances_blocked(blocks, np.asarray(label_idx), n_classes, np.zeros(emb.shape[1:]))
    return own, nearest


BlockSource = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


def centroid_distances_blocked(blocks: BlockSource, label_of: np.ndarray, n_classes: int,
                               centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`centroid_distances` over embeddings read block by block (memory: one block).

    blocks(): a fresh iterator of (row indices, (k, d) embeddings) (it is read twice: the class centroids,
    then the distances); label_of: label index per row index (-1 = unlabelled); centre: subtracted from
    every embedding first. Returns (rows in the order read, own, nearest) aligned with rows.
    """
    sums = np.zeros((n_classes, len(centre)))
    counts = np.zeros(n_classes)
    total, n_total = np.zeros(len(centre)), 0
    centre32 = np.asarray(centre, np.float32)
    for idx, emb in blocks():
        e = l2_normalize(emb - centre32)
        lab = np.asarray(label_of)[idx]
        np.add.at(counts, lab[lab >= 0], 1)
        for c in np.unique(lab[lab >= 0]):
            sums[c] += e[lab == c].sum(axis=0, dtype=np.float64)
        total += e.sum(axis=0, dtype=np.float64)
        n_total += len(e)
    present = counts > 0
    cents = np.zeros_like(sums)
    cents[present] = sums[present] / counts[present, None]
    if not present.any():  # nothing labelled: one centroid of everything
        cents[0] = total / max(n_total, 1)
        present[0] = True
    unit = l2_normalize(cents.astype(np.float32)).T
    rows, own, nearest = [], [], []
    for idx, emb in blocks():
        e = l2_normalize(emb - centre32)
        lab = np.asarray(label_of)[idx]
        dist = 1.0 - e @ unit  # (k, n_classes)
        dist[:, ~present] = np.inf
        nearest.append(dist.min(axis=1).astype(np.float64))
        o = np.full(len(e), np.nan)
        has = lab >= 0
        o[has] = dist[np.flatnonzero(has), lab[has]]
        own.append(o)
        rows.append(np.asarray(idx, np.int64))
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)
    return cat(rows, np.int64), cat(own, np.float64), cat(nearest, np.float64)


class EmbeddingBlocks:
    """Embeddings of some of the samples, kept in a temporary file block by block (float32) rather than in
    memory: what stays in memory is the row index of each embedding (8 bytes a row) and a running sum for
    the mean. Rows with a NaN are left out (not embedded)."""

    def __init__(self, folder: Path | None = None, block_rows: int = 16384):
        self._file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 (lives as long as the object)
        self.block_rows = block_rows
        self.dim = 0
        self._idx: list[np.ndarray] = []
        self._sum: np.ndarray | None = None

    def add(self, idx: np.ndarray, emb: np.ndarray) -> None:
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        ok = ~np.isnan(emb).any(axis=1)
        idx, emb = np.asarray(idx, np.int64)[ok], emb[ok]
        if self._sum is None:
            self.dim = emb.shape[1]
            self._sum = np.zeros(self.dim)
        if not len(idx):
            return
        self._file.seek(0, 2)
        self._file.write(emb.tobytes())
        self._idx.append(idx)
        self._sum += emb.sum(axis=0, dtype=np.float64)

    def __len__(self) -> int:
        return int(sum(len(i) for i in self._idx))

    def rows(self) -> np.ndarray:
        """Row indices of the embeddings, in file order."""
        return np.concatenate(self._idx) if self._idx else np.zeros(0, np.int64)

    def mean(self) -> np.ndarray:
        return (self._sum / max(len(self), 1)).astype(np.float32) if self._sum is not None else np.zeros(0, np.float32)

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row indices, (k, dim) float32) of at most `block_rows` rows at a time, in file order."""
        rows = self.rows()
        self._file.seek(0)
        for s in range(0, len(rows), self.block_rows):
            k = len(rows[s : s + self.block_rows])
            data = self._file.read(k * self.dim * 4)
            yield rows[s : s + k], np.frombuffer(data, np.float32).reshape(k, self.dim)

    def dense(self, n: int) -> np.ndarray:
        """(n, dim) float32 with NaN rows where a sample has no embedding (the whole matrix: small n only)."""
        out = np.full((n, self.dim), np.nan, np.float32)
        for idx, emb in self.blocks():
            out[idx] = emb
        return out

    def close(self) -> None:
        self._file.close()


def cosine_pairs_blocked(
    emb: np.ndarray, min_cos: float, block: int = 2048, mutual: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of rows with cosine similarity >= min_cos, by blocks of `block` rows.

    mutual=True keeps only mutual nearest neighbours (i's most similar row is j and j's is i):
    one weak global threshold can otherwise chain a whole collection into one cluster (seen with
    a small model on FER2013). O(n^2 d) time, O(n * block) memory.
    Returns (pairs int64 (m, 2), similarity float32 (m,)).
    """
    e = l2_normalize(emb)
    n = len(e)
    if mutual:
        nn = np.full(n, -1, np.int64)
        best = np.full(n, -np.inf, np.float32)
        for s in range(0, n, block):
            sim = e[s : s + block] @ e.T
            sim[np.arange(len(sim)), np.arange(s, s + len(sim))] = -np.inf
            nn[s : s + block] = sim.argmax(axis=1)
            best[s : s + block] = sim[np.arange(len(sim)), nn[s : s + block]]
        i = np.arange(n)
        ok = (nn >= 0) & (i < nn) & (best >= min_cos)
        ok[ok] &= nn[nn[ok]] == i[ok]
        return np.stack([i[ok], nn[ok]], 1).astype(np.int64), best[ok]
    out_i, out_j, out_s = [], [], []
    for s in range(0, n, block):
        sim = e[s : s + block] @ e.T
        i, j = np.nonzero(sim >= min_cos)
        i = i + s
        up = i < j
        out_i.append(i[up])
        out_j.append(j[up])
        out_s.append(sim[i[up] - s, j[up]])
    if not out_i:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    return np.stack([np.concatenate(out_i), np.concatenate(out_j)], 1).astype(np.int64), np.concatenate(out_s)


def load_embedder(model_dir: Path | ModelDir, batch: int = 512,
                  threads: int | None = 1) -> Callable[[Sequence[bytes]], np.ndarray] | None:
    """A function mapping aligned PNG crops to embeddings (n, d) float32, or None without a model.

    Loads ``ferclean.train.model_io.load_model(model_dir)`` once; the function calls
    ``ferclean.train.model_io.score(model, crops)`` (-> probs, alpha, sem_dist, embeddings) in batches.
    None when the folder holds no trained model (the train stage has not run yet). threads: torch threads
    while embedding (:func:`ferclean.inference.inference_settings`).
    """
    if not ModelDir(model_dir).exists():
        return None
    # torch: only when a model is used
    from ferclean.inference import INFER_BATCH, inference_settings
    from ferclean.train.model_io import load_model, score

    model = load_model(model_dir)

    def embed(crops: Sequence[bytes]) -> np.ndarray:
        parts = []
        with inference_settings(model, threads):
            for s in range(0, len(crops), batch):
                *_, emb = score(model, list(crops[s : s + batch]), batch_size=min(batch, INFER_BATCH))
                parts.append(np.asarray(emb, dtype=np.float32).reshape(len(crops[s : s + batch]), -1))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    return embed

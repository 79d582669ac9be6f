"""Duplicate clusters: union of pair edges, then per-cluster keep / conflict / leak analysis.

All functions are pure (numpy / python in, numpy / python out).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: Split preference of the keep rule: keep the evaluation copy, drop the training copy.
SPLIT_PRIORITY: dict[str, int] = {"test": 0, "valid": 1, "train": 2, "unlabelled": 3}
EVAL_SPLITS = ("train", "valid", "test")


def union_clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over `n` nodes joined by `pairs` (m, 2) int: the cluster label of each node.

    Labels are 0..c-1, every node in exactly one cluster (singletons included); two nodes share
    a label iff a chain of pairs joins them. Computed as connected components (scipy), which is
    what a union-find with path compression yields, in C.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def group_pairs(keys: np.ndarray) -> np.ndarray:
    """Star edges (first member, other member) joining the items that share a key. (m, 2) int64."""
    _, inverse = np.unique(keys, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    inv_sorted = inverse[order]
    first = np.r_[True, inv_sorted[1:] != inv_sorted[:-1]]
    head = order[np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))]
    edges = np.stack([head, order], axis=1)
    return edges[~first].astype(np.int64)


def clustered_rows(cluster: np.ndarray) -> np.ndarray:
    """Rows (ascending) whose cluster label has >= 2 members: the only rows :func:`analyze_clusters` reports
    on, so it can be given just these rows (`cluster[rows]` and their per-sample values) for the same reports."""
    cluster = np.asarray(cluster, np.int64)
    if not len(cluster):
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.bincount(cluster)[cluster] >= 2)


def cluster_id_for(sample_ids: Sequence[str]) -> str:
    """Stable id of a cluster: 'dup-' + 16 hex of SHA-1 over its sorted member ids."""
    blob = "\n".join(sorted(sample_ids)).encode()
    return "dup-" + hashlib.sha1(blob).hexdigest()[:16]


@dataclass(slots=True)
class ClusterReport:
    """Analysis of one duplicate cluster (>= 2 members). Slotted: a 1M collection can have 100 k+ of them."""

    cluster_id: str
    members: list[str]
    keep: str
    exact: bool  # all members have the same file bytes
    labels: dict[str, int]  # label -> members carrying it (null labels left out)
    splits: dict[str, int]
    conflicting: bool
    leak: bool
    sha_groups: dict[str, list[str]] = field(default_factory=dict)  # sha -> members, groups of >= 2
    member_splits: dict[str, str] = field(default_factory=dict)  # sample_id -> split
    n_files: int = 0  # distinct content_sha256 values

    @property
    def majority_label(self) -> str | None:
        if not self.labels:
            return None
        top = Counter(self.labels).most_common()
        return top[0][0] if len(top) == 1 or top[0][1] > top[1][1] else None


def choose_keep(
    ids: Sequence[str], splits: Sequence[str], labels: Sequence[str | None], areas: Sequence[int]
) -> str:
    """The member a de-duplicated dataset keeps. Rule, in order:

    1. split: test, then valid, then train, then unlabelled (keep the held-out copy so the
       evaluation set stays intact; dropping the training copy removes the leak);
    2. label agrees with the cluster's strict-majority label;
    3. larger image (width * height px);
    4. smallest sample_id (deterministic tie-break).
    """
    counts = Counter(lab for lab in labels if lab is not None)
    top = counts.most_common(2)
    majority = top[0][0] if top and (len(top) == 1 or top[0][1] > top[1][1]) else None

    def rank(k: int) -> tuple:
        return (
            SPLIT_PRIORITY.get(splits[k], 9),
            0 if majority is not None and labels[k] == majority else 1,
            -int(areas[k]),
            ids[k],
        )

    return ids[min(range(len(ids)), key=rank)]


def analyze_clusters(
    cluster: np.ndarray,
    sample_ids: Sequence[str],
    splits: Sequence[str],
    labels: Sequence[str | None],
    shas: Sequence[Hashable],
    areas: Sequence[int],
) -> list[ClusterReport]:
    """One report per cluster label with >= 2 members, ordered by cluster_id.

    cluster: (n,) labels from :func:`union_clusters`; the sequences are per sample (length n). `shas` is the
    file's identity: its content_sha256, or any key equal exactly where the bytes are (the stage passes sha
    codes and names the groups after).
    A cluster is conflicting when its members carry >= 2 distinct non-null labels, and leaks when
    they sit in >= 2 of the splits train / valid / test.
    """
    cluster = np.asarray(cluster)
    order = np.argsort(cluster, kind="stable")
    cs = cluster[order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    ends = np.r_[starts[1:], len(cs)]
    reports = []
    for s, e in zip(starts, ends, strict=True):
        if e - s < 2:
            continue
        idx = order[s:e].tolist()
        ids = [sample_ids[k] for k in idx]
        sp = [splits[k] for k in idx]
        lb = [labels[k] for k in idx]
        sh = [shas[k] for k in idx]
        label_counts = Counter(x for x in lb if x is not None)
        split_counts = Counter(sp)
        by_sha: dict[str, list[str]] = {}
        for sid, h in zip(ids, sh, strict=True):
            by_sha.setdefault(h, []).append(sid)
        reports.append(
            ClusterReport(
                cluster_id=cluster_id_for(ids),
                members=sorted(ids),
                keep=choose_keep(ids, sp, lb, [areas[k] for k in idx]),
                exact=len(by_sha) == 1,
                labels=dict(sorted(label_counts.items())),
                splits=dict(sorted(split_counts.items())),
                conflicting=len(label_counts) >= 2,
                leak=sum(1 for x in EVAL_SPLITS if split_counts.get(x)) >= 2,
                sha_groups={h: sorted(v) for h, v in sorted(by_sha.items()) if len(v) >= 2},
                member_splits=dict(sorted(zip(ids, sp, strict=True))),
                n_files=len(by_sha),
            )
        )
    reports.sort(key=lambda r: r.cluster_id)
    return reports

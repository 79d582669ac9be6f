"""The interface every dataset-issue detector implements, and the evidence they share.

In the manner of cleanlab's `IssueManager` classes: a detector is a class with a `name`, the
`issue_types` it writes and one method, `find(ctx) -> list[issue row]`. Evidence several detectors
need (duplicate clusters, embedding distances, face-space appearance) is computed once, on first use,
by :class:`IssueContext`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from ferclean.dataset_issues.clusters import (
    ClusterReport,
    analyze_clusters,
    clustered_rows,
    group_pairs,
    union_clusters,
)
from ferclean.dataset_issues.config import DatasetIssuesConfig
from ferclean.dataset_issues.embeddings import (
    centroid_distances_blocked,
    cosine_pairs_blocked,
    robust_z,
)
from ferclean.dataset_issues.nonface import embedding_evidence
from ferclean.dataset_issues.phases import PhaseClock
from ferclean.dataset_issues.samples import SampleTable
from ferclean.dataset_issues.signals import (
    Signals,
    edge_summary,
    face_space_evidence,
    phash_edges,
)
from ferclean.stage_executor import StageExecutor
from ferclean.store import Store


@dataclass
class Clusters:
    """Duplicate clusters: one report per cluster, its edge summary, and the pHash search stats."""

    reports: list[ClusterReport]
    edge_info: dict[str, dict]
    phash_stats: dict[str, Any]

    def stats(self) -> dict[str, Any]:
        """The counts the stage summary keeps after the reports themselves are released."""
        return {"clusters": len(self.reports), "samples_in_clusters": sum(len(r.members) for r in self.reports),
                "phash": dict(self.phash_stats)}


@dataclass
class EmbeddingStats:
    """Per-sample embedding evidence (NaN where a sample has no embedding)."""

    far: np.ndarray  # (n,) evidence that the sample is far from every class centroid (not_a_face)
    own: np.ndarray  # (n,) cosine distance to the own-class centroid
    z_own: np.ndarray  # (n,) robust z of `own` within its class


@dataclass
class IssueContext:
    """What the detectors see: the samples' columns, the gathered signals, the stage config."""

    store: Store
    cfg: DatasetIssuesConfig
    samples: SampleTable
    sig: Signals
    has_faces: bool
    progress: bool = False
    clock: PhaseClock = field(default_factory=PhaseClock)  # wall / CPU per phase (the stage writes it out)
    runner: StageExecutor | None = None  # where per-image work runs (ferclean.stage_executor); None = here

    #: The shared evidence computed on first use (cached properties) that :meth:`release` can let go of.
    SHARED: ClassVar[tuple[str, ...]] = ("clusters", "embedding_stats", "face_space")

    def __post_init__(self) -> None:
        # centre: backbone features are often all >= 0 (ReLU), making every raw cosine ~1
        self.emb_centre = self.sig.embedding.mean() if self.sig.embedding is not None else None
        self._cluster_stats: dict[str, Any] | None = None

    def release(self, still_needed: set[str]) -> None:
        """Drop the computed shared evidence no later detector needs (its `needs`), so the later phases do not
        allocate on top of it (1M jittered faces: 124 k duplicate clusters' reports and edge info are ~150 MB of
        Python objects)."""
        unknown = set(still_needed) - set(self.SHARED)
        if unknown:
            raise ValueError(f"unknown shared evidence {sorted(unknown)}; known: {list(self.SHARED)}")
        for name in self.SHARED:
            if name not in still_needed and name in self.__dict__:
                if name == "clusters":
                    self._cluster_stats = self.__dict__[name].stats()
                del self.__dict__[name]

    @property
    def cluster_stats(self) -> dict[str, Any]:
        """{clusters, samples_in_clusters, phash} of the duplicate clusters, also after they were released."""
        if "clusters" in self.__dict__ or self._cluster_stats is None:
            return self.clusters.stats()
        return self._cluster_stats

    @property
    def n(self) -> int:
        return self.samples.n

    @cached_property
    def embedded(self) -> np.ndarray:
        """Indices of the samples with an embedding."""
        if self.sig.embedding is None:
            return np.zeros(0, np.int64)
        return np.sort(self.sig.embedding.rows())

    @cached_property
    def clusters(self) -> Clusters:
        """Duplicate clusters joined by identical bytes, pHash (and mirror) edges and, when
        `embed_duplicates`, embedding edges."""
        cfg, sig, n = self.cfg, self.sig, self.n
        # identical bytes: group by the sha codes (samples.sha_codes: 8 bytes a row, no string per sample)
        sha_codes = self.samples.sha_codes()
        sha_edges = group_pairs(sha_codes) if n else np.zeros((0, 2), np.int64)
        edges, sims, methods, hstats = phash_edges(sig, cfg)
        edges = np.concatenate([sha_edges, edges])
        sims = np.concatenate([np.ones(len(sha_edges)), sims])
        methods = ["sha256"] * len(sha_edges) + methods
        emb_ok = self.embedded
        if sig.embedding is not None and cfg.embed_duplicates and 0 < len(emb_ok) <= cfg.embed_max_n:
            ep, es = cosine_pairs_blocked(sig.embedding.dense(n)[emb_ok] - self.emb_centre, cfg.embed_cosine_min)
            edges = np.concatenate([edges, emb_ok[ep]])
            sims = np.concatenate([sims, es])
            methods += ["embedding"] * len(ep)
        cluster = union_clusters(n, edges)
        # the analysis sees only the rows in clusters of >= 2 (their Python strings; not every sample's)
        members = clustered_rows(cluster)
        sm = self.samples
        ids = sm.id_list(members)
        # files are told apart by their sha codes (a Python int each, not a 64-character string); only the hashes
        # of files held more than once are named (1M jittered faces: 354 k clustered rows, 40 MB of strings)
        reports = analyze_clusters(cluster[members], ids, sm.split_list(members), sm.label_list(members),
                                   sha_codes[members].tolist(), sm.areas[members])
        name_sha_groups(reports, sha_codes, sm)
        row_of = dict(zip(ids, members.tolist(), strict=True))
        cid_of = {int(cluster[row_of[r.members[0]]]): r.cluster_id for r in reports}
        return Clusters(reports, edge_summary(cluster, edges, sims, methods, cid_of), hstats)

    @cached_property
    def embedding_stats(self) -> EmbeddingStats | None:
        """Centroid distances of the embedded samples, or None with fewer than 3 of them."""
        emb_ok = self.embedded
        if self.sig.embedding is None or len(emb_ok) < 3:
            return None
        with self.clock.phase("embedding_stats"):
            return self._embedding_stats(emb_ok)

    def _embedding_stats(self, emb_ok: np.ndarray) -> EmbeddingStats:
        # label index in the sorted class names, -1 for no label
        values = self.samples.label_values
        classes = sorted(values)
        to_sorted = np.array([classes.index(v) for v in values] + [-1], np.int64)
        label_of = to_sorted[self.samples.label_codes]  # code -1 -> the appended -1
        rows, own, nearest = centroid_distances_blocked(self.sig.embedding.blocks, label_of, max(1, len(classes)),
                                                        self.emb_centre)
        cidx = label_of[rows]
        far = np.full(self.n, np.nan)
        far[rows] = embedding_evidence(robust_z(nearest), self.cfg.outlier_z)
        lab = cidx >= 0
        z = np.full(len(rows), np.nan)
        z[lab] = robust_z(own[lab], cidx[lab])
        own_all, z_all = np.full(self.n, np.nan), np.full(self.n, np.nan)
        own_all[rows], z_all[rows] = own, z
        return EmbeddingStats(far, own_all, z_all)

    @cached_property
    def face_space(self) -> dict[str, np.ndarray]:
        """Appearance evidence of the undetected primary crops (NaN without a faces table)."""
        if not self.has_faces:
            return {k: np.full(self.n, np.nan) for k in ("appearance", "dffs", "dffs_image", "hog")}
        return face_space_evidence(self.store, self.samples, self.sig, self.cfg, self.progress, self.clock,
                                   self.runner)


def name_sha_groups(reports: list[ClusterReport], codes: np.ndarray, samples: SampleTable) -> None:
    """Replace the sha codes keying each report's `sha_groups` by the content_sha256 strings, in sha order."""
    wanted = {c for r in reports for c in r.sha_groups}
    if not wanted:
        return
    rows = np.flatnonzero(np.isin(codes, np.fromiter(wanted, np.int64, len(wanted))))
    name = dict(zip(codes[rows].tolist(), samples.sha_list(rows), strict=True))
    for r in reports:
        if r.sha_groups:
            r.sha_groups = dict(sorted((name[c], v) for c, v in r.sha_groups.items()))


class IssueManager:
    """A dataset-issue detector: `find` returns `dataset_issues` rows (ferclean.dataset_issues.issues)."""

    name: ClassVar[str]
    issue_types: ClassVar[tuple[str, ...]]
    #: The shared evidence of :class:`IssueContext` it reads (IssueContext.SHARED): the stage releases each
    #: piece after the last detector that needs it.
    needs: ClassVar[tuple[str, ...]] = ()

    def find(self, ctx: IssueContext) -> list[dict]:
        raise NotImplementedError

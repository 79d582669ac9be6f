"""Rows of the `dataset_issues` table (written by the detectors in ferclean.dataset_issues.detectors)
and the per-sample reasons the relabel stage reads.

Scores (all in [0, 1], higher = stronger):
- exact_duplicate: 1.0 (identical file bytes);
- near_duplicate: the cluster's weakest link, min over its evidence edges of the similarity
  (pHash: 1 - hamming / 64; embeddings: cosine; identical bytes: 1);
- conflicting_labels: 1 - (members with the majority label) / (labelled members);
- split_leak: the cluster's weakest-link similarity (as near_duplicate);
- not_a_face: :func:`ferclean.dataset_issues.nonface.nonface_score`;
- outlier: cosine distance to the own-class centroid / 2.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping

import pyarrow as pa

from ferclean.dataset_issues.clusters import ClusterReport

ISSUE_TYPES = ("exact_duplicate", "near_duplicate", "conflicting_labels", "split_leak", "not_a_face", "outlier")

#: issue_type -> reason given to the relabel stage (None: per-member rule below).
REASONS = {"conflicting_labels": "conflicting_labels", "not_a_face": "not_a_face", "outlier": "outlier"}


def issue_row(issue_type: str, key: str, cluster_id: str | None, sample_ids: Iterable[str], score: float,
              details: dict) -> dict:
    """One `dataset_issues` row (without run_id): issue_id = "<type>:<key>", score clipped to [0, 1]."""
    return {
        "issue_id": f"{issue_type}:{key}",
        "issue_type": issue_type,
        "cluster_id": cluster_id,
        "sample_ids": sorted(sample_ids),
        "score": float(min(1.0, max(0.0, score))),
        "details": json.dumps(details, sort_keys=True, default=str),
    }


def cluster_base(r: ClusterReport) -> dict:
    """The details every duplicate-cluster row carries."""
    return {"keep": r.keep, "size": len(r.members), "labels": r.labels, "splits": r.splits}


def sample_issue_rows(issue_type: str, sample_ids: Iterable[str], scores: Iterable[float], details: Iterable[dict]) -> list[dict]:
    """One row per flagged sample (not_a_face, outlier); cluster_id is null."""
    return [issue_row(issue_type, sid, None, [sid], s, d) for sid, s, d in zip(sample_ids, scores, details, strict=True)]


def issues_table(rows: list[dict], run_id: str) -> pa.Table:
    """The rows as an Arrow table in contract column order."""
    cols = ["run_id", "issue_id", "issue_type", "cluster_id", "sample_ids", "score", "details"]
    data = {c: [r[c] if c != "run_id" else run_id for r in rows] for c in cols}
    return pa.table({
        **{c: pa.array(data[c], pa.string()) for c in ["run_id", "issue_id", "issue_type", "cluster_id", "details"]},
        "sample_ids": pa.array(data["sample_ids"], pa.list_(pa.string())),
        "score": pa.array(data["score"], pa.float32()),
    }).select(cols)


def issue_reasons(rows: Iterable[Mapping]) -> dict[str, list[str]]:
    """Per-sample reasons from issue rows (dicts with issue_type, sample_ids, details JSON).

    - every member of a duplicate cluster except its kept member ("keep") -> 'duplicate'
      (the relabel stage drops these);
    - members of a leaking cluster whose split differs from the kept member's -> 'split_leak';
    - members of a conflicting cluster -> 'conflicting_labels';
    - not_a_face / outlier samples -> 'not_a_face' / 'outlier'.
    Reasons per sample are sorted and unique.
    """
    out: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        kind = row["issue_type"]
        members = list(row["sample_ids"])
        details = json.loads(row["details"]) if isinstance(row["details"], str) else dict(row["details"])
        if kind in ("exact_duplicate", "near_duplicate"):
            for sid in members:
                if sid != details.get("keep"):
                    out[sid].add("duplicate")
        elif kind == "split_leak":
            keep_split = details.get("member_splits", {}).get(details.get("keep"))
            for sid in members:
                if details.get("member_splits", {}).get(sid) != keep_split:
                    out[sid].add("split_leak")
        elif kind in REASONS:
            for sid in members:
                out[sid].add(REASONS[kind])
    return {sid: sorted(v) for sid, v in sorted(out.items())}


def sample_issue_reasons(store) -> dict[str, list[str]]:  # store: ferclean.store.Store
    """:func:`issue_reasons` over the store's `dataset_issues` table ({} when it is absent)."""
    table = store.read("dataset_issues", columns=["issue_type", "sample_ids", "details"])
    return issue_reasons(table.to_pylist())

"""exact_duplicate: one row per group of identical files (same content_sha256) in a cluster; score 1."""

from __future__ import annotations

from ferclean.dataset_issues.detectors.base import IssueContext, IssueManager
from ferclean.dataset_issues.issues import cluster_base, issue_row


class ExactDuplicates(IssueManager):
    name = "exact_duplicates"
    issue_types = ("exact_duplicate",)
    needs = ("clusters",)

    def find(self, ctx: IssueContext) -> list[dict]:
        return [issue_row("exact_duplicate", sha, r.cluster_id, members, 1.0,
                          {**cluster_base(r), "content_sha256": sha, "group_size": len(members)})
                for r in ctx.clusters.reports for sha, members in r.sha_groups.items()]

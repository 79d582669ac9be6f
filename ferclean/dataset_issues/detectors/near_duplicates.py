"""near_duplicate: one row per cluster holding >= 2 different files; score = its weakest link's similarity."""

from __future__ import annotations

from ferclean.dataset_issues.detectors.base import IssueContext, IssueManager
from ferclean.dataset_issues.issues import cluster_base, issue_row


class NearDuplicates(IssueManager):
    name = "near_duplicates"
    issue_types = ("near_duplicate",)
    needs = ("clusters",)

    def find(self, ctx: IssueContext) -> list[dict]:
        rows = []
        for r in ctx.clusters.reports:
            if not r.exact:
                info = dict(ctx.clusters.edge_info.get(r.cluster_id, {}))
                rows.append(issue_row("near_duplicate", r.cluster_id, r.cluster_id, r.members,
                                      float(info.get("min_similarity", 1.0)),
                                      {**cluster_base(r), **info, "n_files": r.n_files}))
        return rows

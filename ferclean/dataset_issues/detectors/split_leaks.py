"""split_leak: a duplicate cluster spanning train / valid / test; score = its weakest link's similarity."""

from __future__ import annotations

from ferclean.dataset_issues.detectors.base import IssueContext, IssueManager
from ferclean.dataset_issues.issues import cluster_base, issue_row


class SplitLeaks(IssueManager):
    name = "split_leaks"
    issue_types = ("split_leak",)
    needs = ("clusters",)

    def find(self, ctx: IssueContext) -> list[dict]:
        rows = []
        for r in ctx.clusters.reports:
            if r.leak:
                info = dict(ctx.clusters.edge_info.get(r.cluster_id, {}))
                rows.append(issue_row("split_leak", r.cluster_id, r.cluster_id, r.members,
                                      float(info.get("min_similarity", 1.0)),
                                      {**cluster_base(r), **info, "member_splits": r.member_splits}))
        return rows

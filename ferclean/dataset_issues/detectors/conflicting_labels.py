"""conflicting_labels: a duplicate cluster whose members carry different labels;
score = 1 - (members with the majority label) / (labelled members)."""

from __future__ import annotations

from ferclean.dataset_issues.detectors.base import IssueContext, IssueManager
from ferclean.dataset_issues.issues import cluster_base, issue_row


class ConflictingLabels(IssueManager):
    name = "conflicting_labels"
    issue_types = ("conflicting_labels",)
    needs = ("clusters",)

    def find(self, ctx: IssueContext) -> list[dict]:
        return [issue_row("conflicting_labels", r.cluster_id, r.cluster_id, r.members,
                          1.0 - max(r.labels.values()) / sum(r.labels.values()),
                          {**cluster_base(r), "majority_label": r.majority_label})
                for r in ctx.clusters.reports if r.conflicting]

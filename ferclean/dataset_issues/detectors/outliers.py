"""outlier: a sample whose embedding is far from its own class centroid (robust z > `outlier_z`);
score = cosine distance to the centroid / 2. Needs a trained model's embeddings."""

from __future__ import annotations

import numpy as np

from ferclean.dataset_issues.detectors.base import IssueContext, IssueManager
from ferclean.dataset_issues.issues import sample_issue_rows


class Outliers(IssueManager):
    name = "outliers"
    issue_types = ("outlier",)
    needs = ("embedding_stats",)

    def find(self, ctx: IssueContext) -> list[dict]:
        stats = ctx.embedding_stats
        if stats is None:
            return []
        out = np.flatnonzero(np.nan_to_num(stats.z_own, nan=-np.inf) > ctx.cfg.outlier_z)
        labels = ctx.samples.label_list(out)
        return sample_issue_rows(
            "outlier", ctx.samples.id_list(out), [stats.own[i] / 2 for i in out],
            [{"label": lab, "centroid_distance": round(float(stats.own[i]), 5),
              "robust_z": round(float(stats.z_own[i]), 3)} for i, lab in zip(out, labels, strict=True)])

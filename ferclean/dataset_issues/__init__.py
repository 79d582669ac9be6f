"""Dataset-level issues: exact / near duplicate clusters, conflicting labels, split leaks,
not-a-face images and embedding outliers (table `dataset_issues`).

Entry points: :func:`run_dataset_issues` (the stage) and :func:`sample_issue_reasons` (per-sample
reasons for the relabel stage).
"""

from ferclean.dataset_issues.config import DatasetIssuesConfig
from ferclean.dataset_issues.issues import issue_reasons, sample_issue_reasons
from ferclean.dataset_issues.stage import run_dataset_issues

__all__ = ["DatasetIssuesConfig", "issue_reasons", "run_dataset_issues", "sample_issue_reasons"]

"""The dataset-issue detectors, in the order their rows are written.

A new issue type is one new file here (a :class:`IssueManager` subclass with `name`, `issue_types`
and `find`) plus its line in :data:`ISSUE_MANAGERS` (and its type in the `dataset_issues` contract's
allowed values).
"""

from __future__ import annotations

from ferclean.dataset_issues.detectors.base import IssueContext, IssueManager
from ferclean.dataset_issues.detectors.conflicting_labels import ConflictingLabels
from ferclean.dataset_issues.detectors.exact_duplicates import ExactDuplicates
from ferclean.dataset_issues.detectors.near_duplicates import NearDuplicates
from ferclean.dataset_issues.detectors.not_a_face import NotAFace
from ferclean.dataset_issues.detectors.outliers import Outliers
from ferclean.dataset_issues.detectors.split_leaks import SplitLeaks

ISSUE_MANAGERS: tuple[type[IssueManager], ...] = (
    ExactDuplicates, NearDuplicates, ConflictingLabels, SplitLeaks, Outliers, NotAFace,
)

__all__ = ["ISSUE_MANAGERS", "IssueContext", "IssueManager"]

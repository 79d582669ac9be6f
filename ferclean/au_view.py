"""The AU view: a second, independent opinion on each label, from the pseudo-AU intensities alone.

The image network's out-of-fold probabilities mix two kinds of disagreement with a given label:
label noise, and the network's own mistakes. The confident joint cannot tell them apart, so with
a weak network (a small collection, 48 px crops) the verdict rule relabels the network's mistakes
too. A classifier that sees the face through other features makes mostly other mistakes, while a
wrong label looks wrong to both. So the verdicts use the product of the two opinions
(:func:`combine`, a product of experts): p(t) proportional to p_image(t) * p_au(t) ** w.

The view is a multinomial logistic regression on the intensities (`AUxx_r` of the `aus` table,
relative to the neutral reference) and their squares, standardised; cross-fitted on the same folds
as the network, so it is out-of-sample too. Measured (benchmarks/results/noise_synthetic.md and
noise_real_full.md, session 4): with w = 0.5 the verdicts stop hurting on synthetic uniform noise
(10 %: label accuracy 0.900 -> 0.878 without the view, -> 0.908 with it) and gain a little on
FER2013's real noise (final accuracy 0.703 -> 0.708, flag F1 0.719 -> 0.728).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

AU_VIEW_METHOD = "au_view"
PROB_FLOOR = 1e-4  # a class the view never saw in training gets this, not 0 (a product with 0 would veto it)


def features(intensity: np.ndarray) -> np.ndarray:
    """(N, M) AU intensities (NaN = unknown) -> (N, 2M) float64 features [x, x**2], NaN as 0."""
    x = np.nan_to_num(np.asarray(intensity, dtype=np.float64), nan=0.0)
    return np.hstack([x, x * x])


class AuView:
    """Logistic regression from AU intensities to the classes (`fit` / `predict_proba`, as scikit-learn).

    `n_classes` fixes the width of `predict_proba` even when a class is missing from the training
    labels; `to_dict` / `from_dict` store it as plain JSON (scaler, coefficients) for a model folder.
    """

    def __init__(self, n_classes: int, c: float = 1.0, max_iter: int = 2000):
        self.n_classes = n_classes
        self.c = c
        self.max_iter = max_iter
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.coef_: np.ndarray | None = None  # (n_classes, F)
        self.intercept_: np.ndarray | None = None  # (n_classes,)

    def fit(self, intensity: np.ndarray, labels: np.ndarray) -> AuView:
        """intensity: (N, M); labels: (N,) class index in [0, n_classes). Rows with label < 0 are ignored."""
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels, dtype=np.int64)
        keep = labels >= 0
        x = features(intensity)[keep]
        y = labels[keep]
        self.mean_ = x.mean(axis=0)
        self.scale_ = np.where(x.std(axis=0) > 1e-9, x.std(axis=0), 1.0)
        f = x.shape[1]
        self.coef_ = np.zeros((self.n_classes, f))
        self.intercept_ = np.full(self.n_classes, np.log(PROB_FLOOR))
        present = np.unique(y)
        if len(present) == 1:  # one class only: it gets (almost) all the mass
            self.intercept_[present[0]] = 0.0
            return self
        clf = LogisticRegression(C=self.c, max_iter=self.max_iter).fit((x - self.mean_) / self.scale_, y)
        coef, icpt = clf.coef_, clf.intercept_
        if len(present) == 2:  # scikit-learn's binary form: one row for the second class
            coef, icpt = np.vstack([-coef / 2, coef / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
        self.coef_[present] = coef
        self.intercept_[present] = icpt
        return self

    def predict_proba(self, intensity: np.ndarray) -> np.ndarray:
        """(N, M) intensities -> (N, n_classes) probabilities (rows sum to 1)."""
        if self.coef_ is None:
            raise RuntimeError("AuView is not fitted")
        z = ((features(intensity) - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        p = np.maximum(p, PROB_FLOOR)
        return p / p.sum(axis=1, keepdims=True)

    def to_dict(self, au_names: Sequence[str]) -> dict[str, Any]:
        if self.coef_ is None:
            raise RuntimeError("AuView is not fitted")
        return {"au_names": list(au_names), "n_classes": self.n_classes, "features": "x, x**2 (NaN as 0)",
                "mean": self.mean_.tolist(), "scale": self.scale_.tolist(),
                "coef": self.coef_.tolist(), "intercept": self.intercept_.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuView:
        view = cls(int(d["n_classes"]))
        view.mean_, view.scale_ = np.asarray(d["mean"]), np.asarray(d["scale"])
        view.coef_, view.intercept_ = np.asarray(d["coef"]), np.asarray(d["intercept"])
        return view


def crossfit_au_view(intensity: np.ndarray, labels: np.ndarray, folds: np.ndarray, n_classes: int) -> np.ndarray:
    """Out-of-fold (N, n_classes) probabilities: fold k's rows come from a view fitted on the other folds.

    `folds`: (N,) fold index per row (the image network's, so both opinions are out-of-sample for
    the same rows). A row with label < 0 is scored but never trained on.
    """
    out = np.full((len(labels), n_classes), 1.0 / n_classes)
    for k in np.unique(folds):
        te = folds == k
        out[te] = AuView(n_classes).fit(intensity[~te], np.asarray(labels)[~te]).predict_proba(intensity[te])
    return out


def _where_known(probs: np.ndarray, other: np.ndarray | None, weight: float, blend) -> np.ndarray:  # noqa: ANN001
    """probs with `blend(probs_rows, other_rows)` applied to the rows where `other` has an opinion (no NaN);
    probs unchanged for weight 0 or other None."""
    probs = np.asarray(probs, dtype=np.float64)
    if other is None or weight == 0:
        return probs
    o = np.asarray(other, dtype=np.float64)
    known = ~np.isnan(o).any(axis=1)
    out = probs.copy()
    out[known] = blend(probs[known], o[known])
    return out


def combine(probs: np.ndarray, au_probs: np.ndarray | None, weight: float) -> np.ndarray:
    """Product of experts: rows of probs * au_probs ** weight, renormalised.

    probs, au_probs: (N, C). A row of au_probs with NaN (no AU row for that sample) leaves probs
    unchanged, as does weight 0 or au_probs None.
    """
    def blend(p: np.ndarray, a: np.ndarray) -> np.ndarray:
        prod = p * np.clip(a, PROB_FLOOR, 1.0) ** weight
        return prod / prod.sum(axis=1, keepdims=True)

    return _where_known(probs, au_probs, weight, blend)


def mix_views(probs: np.ndarray, other: np.ndarray | None, weight: float) -> np.ndarray:
    """(1 - weight) * probs + weight * other, row by row (e.g. a warm start's init-model view); a NaN row of
    `other` (no opinion on that sample), `other` None or weight 0 leave probs unchanged."""
    return _where_known(probs, other, weight, lambda p, o: (1.0 - weight) * p + weight * o)

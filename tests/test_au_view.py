"""The AU view (ferclean.au_view): a logistic regression on AU intensities and its product with the network."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ferclean.au_view import PROB_FLOOR, AuView, combine, crossfit_au_view, features


def toy_intensities(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 neutral (all AUs low), class 1 raises AU 0, class 2 raises AU 1; 4 AUs, noise 0.3."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(0.2, 0.3, (n, 4)).clip(0)
    x[y == 1, 0] += 2.0
    x[y == 2, 1] += 2.0
    return x, y


def test_view_learns_the_classes_and_keeps_every_column():
    x, y = toy_intensities(300)
    xt, yt = toy_intensities(150, seed=1)
    view = AuView(n_classes=4).fit(x, y)  # class 3 never seen
    p = view.predict_proba(xt)
    assert p.shape == (150, 4) and np.allclose(p.sum(1), 1.0)
    assert (p.argmax(1) == yt).mean() > 0.9
    assert p[:, 3].max() < 10 * PROB_FLOOR  # unseen class: floor, not zero and not a real share


def test_binary_fit_matches_scikit_learn():
    x, y = toy_intensities(200)
    keep = y < 2
    view = AuView(n_classes=3).fit(x[keep], y[keep])
    f = features(x[keep])
    ref = LogisticRegression(max_iter=2000).fit((f - f.mean(0)) / f.std(0), y[keep])
    ours = view.predict_proba(x[keep])
    assert ours[:, 1] / (ours[:, 0] + ours[:, 1]) == pytest.approx(ref.predict_proba((f - f.mean(0)) / f.std(0))[:, 1], abs=1e-6)


def test_round_trip_through_json_dict():
    x, y = toy_intensities(120)
    view = AuView(n_classes=3).fit(x, y)
    again = AuView.from_dict(view.to_dict(["AU01", "AU02", "AU04", "AU06"]))
    assert np.array_equal(again.predict_proba(x), view.predict_proba(x))


def test_crossfit_rows_never_see_their_own_labels():
    x, y = toy_intensities(90)
    folds = np.arange(90) % 3
    base = crossfit_au_view(x, y, folds, 3)
    flipped = y.copy()
    flipped[folds == 0] = (flipped[folds == 0] + 1) % 3  # corrupt fold 0's labels only
    again = crossfit_au_view(x, flipped, folds, 3)
    assert np.allclose(again[folds == 0], base[folds == 0])  # fold 0 is scored by folds 1-2 only
    assert not np.allclose(again[folds == 1], base[folds == 1])  # the others trained on the corrupted rows


def test_combine_is_a_renormalised_product_and_leaves_unknown_rows_alone():
    net = np.array([[0.1, 0.8, 0.1], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    au = np.array([[0.98, 0.01, 0.01], [np.nan] * 3, [1 / 3] * 3])
    out = combine(net, au, 1.0)
    assert np.allclose(out.sum(1), 1.0)
    assert out[0].argmax() == 0  # a confident second opinion overturns the network's argmax
    assert np.allclose(out[1], net[1]) and np.allclose(out[2], net[2])  # no AU row / uniform view: unchanged
    assert np.allclose(combine(net, au, 0.0), net) and np.allclose(combine(net, None, 0.5), net)
    half = combine(net, au, 0.5)
    assert half[0, 0] < out[0, 0]  # a smaller weight moves less

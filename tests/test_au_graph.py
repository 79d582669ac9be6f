"""AU co-occurrence graph: hand-computed toy counts, smoothing, never-present AUs, row norm."""

from __future__ import annotations

import numpy as np
import pytest

from ferclean.au_graph import cooccurrence, graph_table, row_normalise
from ferclean.contracts import load_contract, validate

# 5 faces x 3 AUs (a, b, c); c never present.
TOY = np.array([
    [1, 1, 0],
    [1, 0, 0],
    [1, 1, 0],
    [0, 1, 0],
    [1, 0, 0],
])


def test_counts_and_conditional_probabilities_by_hand():
    co = cooccurrence(TOY)
    # n_a = 4, n_b = 3, n_ab = 2
    assert co.n_q.tolist() == [4, 3, 0]
    assert co.n_pq[0, 1] == co.n_pq[1, 0] == 2
    assert co.A[0, 1] == pytest.approx(2 / 3)  # P(a | b)
    assert co.A[1, 0] == pytest.approx(2 / 4)  # P(b | a)
    assert co.A[0, 1] != co.A[1, 0]  # asymmetric
    assert np.diag(co.A).tolist() == [1.0, 1.0, 1.0]


def test_never_present_au_is_zero_off_diagonal_and_listed():
    co = cooccurrence(TOY, smoothing=1.0)
    assert co.never_present == [2]
    assert not np.isnan(co.A).any()
    assert co.A[2, :2].tolist() == [0.0, 0.0]
    assert co.A[:2, 2].tolist() == [0.0, 0.0]
    assert co.A[2, 2] == 1.0


def test_additive_smoothing():
    co = cooccurrence(TOY, smoothing=1.0)
    assert co.A[0, 1] == pytest.approx((2 + 1) / (3 + 2))
    assert co.A[1, 0] == pytest.approx((2 + 1) / (4 + 2))
    with pytest.raises(ValueError):
        cooccurrence(TOY, smoothing=-1)


def test_bool_and_nan_input_and_bad_values():
    co = cooccurrence(TOY.astype(bool))
    assert co.n_q.tolist() == [4, 3, 0]
    x = TOY.astype(float)
    x[0, 0] = np.nan  # unknown counts as absent
    assert cooccurrence(x).n_q[0] == 3
    with pytest.raises(ValueError):
        cooccurrence(np.array([[0, 2]]))


def test_row_normalise_rows_sum_to_one_zero_row_stays_zero():
    A = np.array([[1.0, 0.5, 0.0], [0.25, 1.0, 0.0], [0.0, 0.0, 0.0]])
    An = row_normalise(A)
    assert An[0].tolist() == pytest.approx([1 / 1.5, 0.5 / 1.5, 0])
    assert An[1].sum() == pytest.approx(1)
    assert An[2].tolist() == [0, 0, 0]


def test_graph_table_matches_contract():
    co = cooccurrence(TOY)
    t = validate(graph_table("r1", ("AU01", "AU02", "AU04"), co), load_contract("au_graph"))
    assert t.num_rows == 9
    row = [r for r in t.to_pylist() if r["au_p"] == "AU01" and r["au_q"] == "AU02"][0]
    assert (row["n_pq"], row["n_q"]) == (2, 3)
    assert row["p_given_q"] == pytest.approx(2 / 3)

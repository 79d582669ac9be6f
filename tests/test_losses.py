"""Hand-computed checks of the SCN / ULC-AG loss functions and rules (ferclean.train.losses)."""

import math

import numpy as np
import pytest
import torch

from ferclean.train import losses as L
from ferclean.train.data import cooccurrence_graph, prototype_aus


def test_class_weights_per_batch():
    g = L.class_weights(torch.tensor([0, 0, 1]), 3)
    assert torch.allclose(g, torch.tensor([1 / 3, 2 / 3, 1.0]))


def test_logit_weighted_ce_scn_and_ulcag():
    logits = torch.tensor([[2.0, 0.0]])
    y = torch.tensor([0])
    a = torch.tensor([0.5])
    # SCN eq. 2: logits scaled by alpha -> [1, 0]: -log(e / (e + 1)) = log(1 + e^-1)
    assert L.logit_weighted_ce(logits, y, a).item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-6)
    # ULC-AG eq. 3: also by gamma_y = 0.5 -> [0.5, 0]
    g = torch.tensor([0.5, 1.0])
    assert L.logit_weighted_ce(logits, y, a, g).item() == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-6)


def test_rank_regularization_margin():
    a = torch.tensor([0.2, 0.9, 0.3, 0.8])
    assert L.rank_regularization(a, 0.5, 0.15).item() == pytest.approx(0.0)
    assert L.rank_regularization(a, 0.5, 0.7).item() == pytest.approx(0.1, abs=1e-6)
    # ratio 0.75 of 4 -> high {0.9, 0.8, 0.3} mean 2/3, low {0.2}: 1.0 - (2/3 - 0.2)
    assert L.rank_regularization(a, 0.75, 1.0).item() == pytest.approx(1.0 - (2 / 3 - 0.2), abs=1e-6)


def test_rank_regularization_gradient_pushes_groups_apart():
    a = torch.tensor([0.6, 0.5, 0.4, 0.3], requires_grad=True)
    L.rank_regularization(a, 0.5, 0.5).backward()
    assert (a.grad[:2] < 0).all() and (a.grad[2:] > 0).all()


def test_high_confidence_mask():
    m = L.high_confidence_mask(torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3]), 0.4)
    assert m.tolist() == [False, True, False, True, False]


def test_weighted_au_bce_ignores_nan_and_scales_by_alpha():
    logits = torch.zeros(1, 2)
    assert L.weighted_au_bce(logits, torch.tensor([[1.0, 0.0]]), torch.tensor([0.5])).item() == pytest.approx(math.log(2))
    assert L.weighted_au_bce(logits, torch.tensor([[1.0, float("nan")]]), torch.tensor([0.5])).item() == pytest.approx(0.5 * math.log(2))


def test_batch_templates_eq8():
    sem = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t, k = L.batch_templates(sem, torch.tensor([1.0, 0.5, 1.0]), torch.tensor([0, 0, 1]),
                             torch.tensor([True, True, False]), 3)
    assert torch.allclose(t[0], torch.tensor([0.5, 0.25]))
    assert torch.allclose(t[1], torch.zeros(2)) and k.tolist() == [2.0, 0.0, 0.0]


def test_update_templates_ema():
    old = torch.tensor([[1.0, 1.0], [0.0, 0.0], [5.0, 5.0]])
    seen = torch.tensor([True, False, True])
    batch = torch.tensor([[3.0, 3.0], [2.0, 4.0], [9.0, 9.0]])
    new, s = L.update_templates(old, seen, batch, torch.tensor([1.0, 2.0, 0.0]), 0.75)
    assert torch.allclose(new[0], torch.tensor([1.5, 1.5]))  # 0.75 * 1 + 0.25 * 3
    assert torch.allclose(new[1], torch.tensor([2.0, 4.0]))  # first sighting: copied
    assert torch.allclose(new[2], torch.tensor([5.0, 5.0]))  # absent: unchanged
    assert s.tolist() == [True, True, True]


def test_cosine_distance_eq9():
    d = L.cosine_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    assert torch.allclose(d, torch.tensor([[0.0, 1.0, 2.0]]), atol=1e-6)


def test_semantic_relabel_eq10():
    d = torch.tensor([[0.5, 0.2, 0.9], [0.1, 0.2, 0.3], [0.5, 0.45, 0.9]])
    y = torch.tensor([0, 0, 0])
    assert L.semantic_relabel(d, y).tolist() == [1, 0, 1]
    assert L.semantic_relabel(d, y, margin=0.1).tolist() == [1, 0, 0]


def test_guard_relabel_keeps_only_classifier_agreed_relabels():
    new = torch.tensor([1, 2, 0, 1])
    y = torch.tensor([0, 0, 0, 1])
    logits = torch.tensor([[0.0, 2.0, 1.0], [0.0, 3.0, 1.0], [5.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    # row 0: template and classifier both say 1 -> relabel; row 1: template 2, classifier 1 -> keep 0;
    # row 2: no relabel proposed; row 3: no relabel proposed although the classifier says 2
    assert L.guard_relabel(new, y, logits).tolist() == [1, 0, 0, 1]


def test_margin_relabel_scn():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    assert L.margin_relabel(p, torch.tensor([1, 2]), 0.2).tolist() == [1, 0]


def test_ramps_eq12_13_and_total():
    assert L.ramp_target(0, 10) == pytest.approx(math.exp(-1))
    assert L.ramp_target(5, 10) == pytest.approx(math.exp(-0.25))
    assert L.ramp_target(11, 10) == 1.0
    assert L.ramp_aux(10, 10) == 1.0 and L.ramp_aux(20, 10) == pytest.approx(math.exp(-0.25))
    t = L.ulcag_total(torch.tensor(2.0), torch.tensor(1.0), torch.tensor(4.0), 0.5, 0.25)
    assert t.item() == pytest.approx(0.25 * 3 + 1.0)


def test_step_lr_scaled_to_budget():
    assert [L.step_lr_factor(e, 9) for e in (0, 2, 3, 5, 6, 8)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cooccurrence_graph_eq5_row_normalised():
    a = cooccurrence_graph(np.array([[1, 1, 0], [1, 0, 0]], dtype=float))
    expect = np.array([[0.5, 0.5, 0], [1 / 3, 2 / 3, 0], [0, 0, 1]])
    assert np.allclose(a, expect)


def test_prototype_aus():
    z = prototype_aus(["happy", "neutral"], ["AU06", "AU12", "AU04"])
    assert z.tolist() == [[1, 1, 0], [0, 0, 0]]

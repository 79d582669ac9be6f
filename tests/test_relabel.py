"""Verdict rules of ferclean.relabel (pure) and run_relabel on a tiny store."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ferclean.relabel import RelabelConfig, apply_face_rules, decide, final_labels, run_relabel
from ferclean.runs import open_run
from ferclean.store import Store
from ferclean.train.stage import prediction_table

CFG = RelabelConfig(rule="threshold", flag_below=0.3, disagree_margin=0.25, borderline=0.1, relabel_min_p=0.55,
                    relabel_margin=0.3, low_alpha=0.35, semantic_weight=0.0,
                    calibrate=False)


def test_keep_review_relabel_by_probability():
    probs = np.array([
        [0.80, 0.10, 0.10],  # confident agreement -> keep
        [0.20, 0.70, 0.10],  # confident disagreement -> relabel to 1
        [0.25, 0.35, 0.40],  # doubtful -> review
        [0.45, 0.40, 0.15],  # p(label)=0.40 >= flag_below, margin 0.05 -> keep
    ])
    d = decide(np.array([0, 0, 0, 1]), probs, None, None, CFG)
    assert d.action.tolist() == ["keep", "relabel", "review", "keep"]
    assert d.suggested.tolist() == [0, 1, 2, 0]
    assert d.margin[1] == pytest.approx(0.5)
    assert "low_confidence" in d.reasons[1] and "model_disagrees" in d.reasons[1]
    assert d.reasons[0] == []
    assert final_labels(np.array([0, 0, 0, 1]), d.action, d.suggested).tolist() == [0, 1, 0, 1]


def test_low_alpha_flags_borderline_only():
    probs = np.array([[0.35, 0.5, 0.15], [0.7, 0.2, 0.1]])
    d = decide(np.array([0, 0]), probs, np.array([0.2, 0.2]), None, CFG)
    assert d.action.tolist() == ["review", "keep"]  # support 0.35 < 0.3 + 0.1 with low alpha; 0.7 not
    assert d.reasons[1] == ["low_alpha"]


def test_semantic_agreement_required_for_relabel():
    probs = np.array([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1]])
    sem = np.array([[0.9, 0.1, 0.5], [0.9, 0.5, 0.1]])  # nearest template 1 (agrees) / 2 (disagrees)
    d = decide(np.array([0, 0]), probs, None, sem, CFG.model_copy(update={"semantic_weight": 0.25}))
    assert d.action.tolist() == ["relabel", "review"]
    assert "semantic_mismatch" in d.reasons[0]
    q = np.exp(-sem[0] / 0.1) / np.exp(-sem[0] / 0.1).sum()
    assert d.support[0] == pytest.approx(0.75 * 0.1 + 0.25 * q[0])


def test_unlabelled_samples():
    d = decide(np.array([-1, -1]), np.array([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3]]), None, None, CFG)
    assert d.action.tolist() == ["relabel", "review"]
    assert np.isnan(d.p_original).all()
    assert final_labels(np.array([-1, -1]), d.action, d.suggested).tolist() == [0, -1]


def test_face_rules():
    cfg = CFG.model_copy(update={"review_flags": ["blurry"], "drop_flags": ["multiple_faces"]})
    reasons = [[], [], [], []]
    act = apply_face_rules(np.array(["keep", "keep", "keep", "relabel"], dtype=object), reasons,
                           np.array([False, True, True, True]), [None, ["blurry"], ["multiple_faces"], ["tiny"]], cfg)
    assert act.tolist() == ["review", "review", "drop", "relabel"]
    assert reasons == [["no_face"], ["blurry"], ["multiple_faces"], ["tiny"]]


def _samples(ids, labels):
    n = len(ids)
    return pa.table({"sample_id": ids, "source_path": ids, "content_sha256": ["0" * 64] * n, "split": ["train"] * n,
                     "label_original": labels, "label_raw": labels, "collection": ["c"] * n, "width": [8] * n,
                     "height": [8] * n, "channels": [1] * n, "source_row": list(range(n)), "run_id": ["r"] * n})


def test_run_relabel_writes_one_row_per_sample(tmp_path):
    store = Store(tmp_path)
    classes = ["neutral", "happy", "sad"]
    store.write_part("samples", "a", _samples(["a", "b", "c", "d"], ["neutral", "neutral", "sad", "happy"]))
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.4, 0.3, 0.3]])
    store.write_part("predictions", "train-ulcag-f0", prediction_table(
        "r", ["a", "b", "c"], "ulcag", 0, classes, probs, np.array([0.9, 0.8, 0.3]), None))
    with open_run(store, "relabel", {}) as run:
        summary = run_relabel(store, run, CFG, progress=False)
    t = store.read("relabels").to_pandas().set_index("sample_id")
    assert summary["rows"] == 4 and len(t) == 4
    assert t.loc["a", "action"] == "keep" and t.loc["a", "label_final"] == "neutral"
    assert t.loc["b", "action"] == "relabel" and t.loc["b", "label_final"] == "happy"
    assert t.loc["c", "action"] == "review" and t.loc["c", "label_final"] == "sad"
    assert t.loc["d", "action"] == "review" and "no_face" in list(t.loc["d", "reasons"])
    assert (t.source == "model").all() and t.decided_at.notna().all()
    assert t.loc["b", "p_original"] == pytest.approx(0.1) and t.loc["b", "margin"] == pytest.approx(0.7)


def test_dataset_issue_reasons_escalate_but_never_relax():
    from ferclean.relabel import apply_issue_rules

    reasons = [[], [], ["low_confidence"]]
    act = apply_issue_rules(np.array(["keep", "keep", "review"], dtype=object), reasons, ["a", "b", "c"],
                            {"a": ["duplicate"], "b": ["outlier"], "c": ["outlier"]}, RelabelConfig())
    assert act.tolist() == ["drop", "keep", "review"]
    assert reasons == [["duplicate"], ["outlier"], ["low_confidence", "outlier"]]


def test_temperature_calibration_recovers_sharpening():
    from ferclean.relabel import apply_temperature, calibrate_temperature

    rng = np.random.default_rng(0)
    true_p = rng.dirichlet(np.ones(4) * 0.5, size=4000)
    labels = np.array([rng.choice(4, p=p) for p in true_p])
    flat = apply_temperature(true_p, 2.0)  # a model whose probabilities are too flat
    assert calibrate_temperature(flat, labels) == pytest.approx(0.5, rel=0.1)
    assert np.allclose(apply_temperature(flat, 0.5), true_p, atol=1e-6)


def test_confident_joint_matches_cleanlab_on_a_small_problem():
    from cleanlab.count import estimate_joint

    from ferclean.relabel import confident_joint

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=300)
    labels = np.where(rng.random(300) < 0.8, probs.argmax(1), rng.integers(0, 3, 300))
    j = confident_joint(labels, probs)
    assert j.sum() == pytest.approx(1.0)
    assert np.allclose(j.sum(1), np.bincount(labels, minlength=3) / 300)
    assert np.abs(j - estimate_joint(labels, probs)).max() < 0.01  # cleanlab rounds counts to integers


def test_bayes_posterior_weighs_the_label_by_the_noise_matrix():
    from ferclean.relabel import bayes_posterior, noise_matrix

    joint = np.array([[0.4, 0.1], [0.0, 0.5]])  # given 0 is sometimes truly 1; given 1 always truly 1
    nm = noise_matrix(joint)
    assert nm[:, 0].tolist() == [1.0, 0.0] and nm[:, 1] == pytest.approx([1 / 6, 5 / 6])
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    post = bayes_posterior(np.array([0, 1, -1]), probs, joint)
    assert post[0] == pytest.approx([6 / 7, 1 / 7])  # 0.5 * 1 vs 0.5 * 1/6
    assert post[1, 1] == pytest.approx(1.0, abs=1e-5)  # a true 0 is never given 1
    assert post[2] == pytest.approx([0.5, 0.5])  # unlabelled: the model alone
    shifted = bayes_posterior(np.array([-1]), probs[:1], joint, class_prior=[0.8, 0.2])
    assert shifted[0] == pytest.approx([0.8 / 0.4 / (0.8 / 0.4 + 0.2 / 0.6), 0.2 / 0.6 / (0.8 / 0.4 + 0.2 / 0.6)])
    empty = noise_matrix(np.array([[0.5, 0.0], [0.5, 0.0]]))
    assert empty[1, 1] == 1.0  # a true class with no mass keeps its own label


def test_prior_shift_divides_by_the_training_label_shares():
    from ferclean.relabel import bayes_posterior

    labels = np.array([0, 0, 0, 1])  # the model was trained on 3/4 class 0
    probs = np.full((4, 2), 0.5)
    joint = np.array([[0.749, 0.001], [0.0, 0.25]])  # true-class marginal of class 1: 0.251
    noshift = bayes_posterior(labels, probs, joint)
    same = bayes_posterior(labels, probs, joint, class_prior=[0.75, 0.25])  # reference = training mix: no shift
    np.testing.assert_allclose(same, noshift, atol=1e-9)
    half = bayes_posterior(labels, probs, joint, class_prior=[0.5, 0.5])
    odds = (noshift[:, 1] / noshift[:, 0]) * (0.5 / 0.25) / (0.5 / 0.75)
    np.testing.assert_allclose(half[:, 1] / half[:, 0], odds, rtol=1e-6)
    given = bayes_posterior(labels, probs, joint, class_prior=[0.5, 0.5], train_prior=[0.5, 0.5])
    np.testing.assert_allclose(given, noshift, atol=1e-9)  # a model trained on a 50/50 mix: nothing to undo
    # a rare class whose confident-joint marginal nearly vanishes is not blown up by the shift
    rare = np.array([[0.899, 0.0], [0.1, 0.001]])
    rare = rare / rare.sum()
    lab = np.array([0] * 9 + [1])
    out = bayes_posterior(lab, np.full((10, 2), 0.5), rare, class_prior=[0.9, 0.1])
    np.testing.assert_allclose(out, bayes_posterior(lab, np.full((10, 2), 0.5), rare), atol=1e-9)


def test_bayes_rule_actions():
    cfg = RelabelConfig(calibrate=False, bayes_flag_below=0.5)
    assert RelabelConfig().rule == "bayes"
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    probs = np.array([
        [0.9, 0.1],   # agrees -> keep
        [0.8, 0.2],   # keep
        [0.05, 0.95],  # strongly disagrees -> relabel to 1
        [0.2, 0.8],   # keep
        [0.1, 0.9],   # keep
        [0.45, 0.55],  # keep
        [0.4, 0.6],   # disagrees mildly
        [0.7, 0.3],   # disagrees
    ])
    d = decide(labels, probs, None, None, cfg)
    post = d.support
    assert np.all((post >= 0) & (post <= 1))
    assert d.action[0] == "keep" and d.action[2] == "relabel" and d.suggested[2] == 1
    for i, a in enumerate(d.action):
        assert (a != "keep") == (post[i] < 0.5)
        if a == "review":  # the suggestion of a review row is never its own label
            assert d.suggested[i] != labels[i]
    fin = final_labels(labels, d.action, d.suggested)
    assert fin[2] == 1 and fin[0] == 0
    auto = decide(labels, probs, None, None, cfg.model_copy(update={"bayes_flag_below": None}))
    assert 1 <= int((auto.action != "keep").sum()) <= len(labels)
    assert np.argmin(auto.support) in np.flatnonzero(auto.action != "keep")


def test_a_confident_au_view_overturns_a_relabel(tmp_path):
    store = Store(tmp_path)
    classes = ["neutral", "happy", "sad"]
    store.write_part("samples", "a", _samples(["a", "b", "c"], ["neutral", "neutral", "sad"]))
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    store.write_part("predictions", "train-ulcag-f0", prediction_table(
        "r", ["a", "b", "c"], "ulcag", 0, classes, probs, np.array([0.9, 0.8, 0.9]), None))
    with open_run(store, "relabel", {}) as run:
        alone = run_relabel(store, run, CFG, progress=False)
    assert alone["au_view"] == "absent (no au_view predictions: train without an aus table?)"
    assert store.read("relabels").to_pandas().set_index("sample_id").loc["b", "action"] == "relabel"
    # the AU view (no row for "c") is sure that "b" is neutral: the product no longer supports happy
    store.write_part("predictions", "train-au_view-f0", prediction_table(
        "r", ["a", "b"], "au_view", 0, classes, np.array([[0.45, 0.5, 0.05], [0.98, 0.01, 0.01]]), None, None))
    with open_run(store, "relabel", {}) as run:
        both = run_relabel(store, run, CFG.model_copy(update={"au_view_weight": 1.0}), progress=False)
        second = run.run_id
    t = store.read("relabels").to_pandas()
    t = t[t.run_id == second].set_index("sample_id")
    assert both["au_view"] == "weight 1.0, 2 samples"
    assert t.loc["b", "action"] != "relabel" and t.loc["b", "label_final"] == "neutral"
    assert t.loc["c", "action"] == "keep" and t.loc["c", "p_original"] == pytest.approx(0.8)
    # "a" stays neutral (the network is sure), but the reviewer sees that the AU view leans to happy
    assert t.loc["a", "action"] == "keep" and "au_view_disagrees" in list(t.loc["a", "reasons"])
    assert "au_view_disagrees" not in list(t.loc["b", "reasons"]) and "au_view_disagrees" not in list(t.loc["c", "reasons"])

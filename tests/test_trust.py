"""A verdict rule that knows how strong its model is, and relabel-collection's domain-shift guard (tiny inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from ferclean.domain_shift import confidence_profile, mix_gap, shift_report
from ferclean.noise import (
    RelabelConfig,
    au_view_weight_for,
    bounded_joint,
    decide,
    noise_matrix,
    shrink_joint,
    trust_shrink,
    trust_summary,
    view_accuracies,
)
from ferclean.relabel import verdict_rows


def _noisy_views(n: int, c: int, acc: dict[str, float], seed: int = 0):
    """Truth and three views that are right with the given probabilities, wrong uniformly otherwise."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, c, n)

    def view(a: float) -> np.ndarray:
        wrong = (truth + rng.integers(1, c, n)) % c
        return np.where(rng.random(n) < a, truth, wrong)

    return truth, view(acc["label"]), view(acc["model"]), view(acc["au"])


def _onehot(idx: np.ndarray, c: int, p: float = 0.8) -> np.ndarray:
    out = np.full((len(idx), c), (1 - p) / (c - 1))
    out[np.arange(len(idx)), idx] = p
    return out


def test_view_accuracies_recovers_independent_views():
    _, lab, net, au = _noisy_views(20000, 5, {"label": 0.7, "model": 0.5, "au": 0.6})
    est = view_accuracies(lab, _onehot(net, 5), _onehot(au, 5))
    assert est["label_accuracy"] == pytest.approx(0.7, abs=0.03)
    assert est["model_accuracy"] == pytest.approx(0.5, abs=0.03)
    assert est["au_view_accuracy"] == pytest.approx(0.6, abs=0.03)
    assert view_accuracies(lab, _onehot(net, 5), None) is None


def test_shrink_joint_keeps_rows_and_moves_towards_identity():
    j = np.array([[0.3, 0.1], [0.2, 0.4]])
    s = shrink_joint(j, 0.5)
    np.testing.assert_allclose(s.sum(axis=1), j.sum(axis=1))
    np.testing.assert_allclose(s, [[0.35, 0.05], [0.1, 0.5]])
    np.testing.assert_allclose(shrink_joint(j, 0.0), np.diag([0.4, 0.6]))
    assert trust_shrink(j, 0.85) == pytest.approx(0.15 / 0.3)  # label noise 0.15 of the joint's 0.3
    assert trust_shrink(j, None) == 1.0 and trust_shrink(j, 0.5) == 1.0


def test_a_weak_model_relabels_less_and_says_how_far_to_trust_it():
    """Labels 70 % right, model 45 % right: relabelling every confident disagreement would make the labels
    worse; with trust auto the relabels that remain are at least as often right as the labels they replace."""
    c = 4
    truth, lab, net, au = _noisy_views(4000, c, {"label": 0.7, "model": 0.45, "au": 0.6}, seed=1)
    probs, aup = _onehot(net, c, 0.6), _onehot(au, c, 0.6)
    acc = view_accuracies(lab, probs, aup)
    off = decide(lab, probs, None, None, RelabelConfig(trust="off", calibrate=False))
    on = decide(lab, probs, None, None, RelabelConfig(calibrate=False), label_accuracy=acc["label_accuracy"])
    assert on.shrink < 1.0 and off.shrink == 1.0
    n_off, n_on = (off.action == "relabel").sum(), (on.action == "relabel").sum()
    assert n_on < n_off
    assert ((off.action == "review") | (off.action == "relabel")).sum() == ((on.action == "review") | (on.action == "relabel")).sum()

    def gain(d) -> int:
        r = d.action == "relabel"
        return int((d.suggested[r] == truth[r]).sum() - (lab[r] == truth[r]).sum())

    assert gain(off) < 0 and gain(on) >= gain(off)
    summary = trust_summary(on, lab, acc)
    assert summary["shrink"] == pytest.approx(on.shrink, abs=1e-4) and summary["relabels"] == n_on
    assert {"label_accuracy", "model_accuracy"} <= set(summary)
    assert {"relabel_precision_est", "expected_gain_points"} <= set(trust_summary(off, lab, acc))


def test_verdict_rows_fill_trust_and_send_relabels_to_review_under_domain_shift():
    c = 3
    truth, lab, net, au = _noisy_views(300, c, {"label": 0.6, "model": 0.9, "au": 0.8}, seed=2)
    classes = ["a", "b", "c"]
    names = [classes[k] for k in lab]
    args = (names, classes, _onehot(net, c, 0.9), None, None, np.ones(300, bool), [None] * 300)
    trust: dict = {}
    t = verdict_rows([f"s{i}" for i in range(300)], *args, RelabelConfig(), "r", "ce", au_probs=_onehot(au, c),
                     trust=trust)
    assert "relabel" in t["action"].to_pylist() and trust["relabels"] > 0 and "label_accuracy" in trust
    g = verdict_rows([f"s{i}" for i in range(300)], *args, RelabelConfig(), "r", "ce", au_probs=_onehot(au, c),
                     review_reason="domain_shift")
    acts, reasons = g["action"].to_pylist(), g["reasons"].to_pylist()
    assert "relabel" not in acts
    moved = [i for i, a in enumerate(t["action"].to_pylist()) if a == "relabel"]
    assert all(acts[i] == "review" and "domain_shift" in reasons[i] for i in moved)


def test_shift_report_flags_a_class_mix_the_labels_do_not_have():
    c = 3
    labels = np.array([0] * 80 + [1] * 10 + [2] * 10)
    same = _onehot(labels, c, 0.8)
    ref = confidence_profile(same, labels)
    assert ref["mix_gap"] == 0.0 and ref["mean_max_p"] == pytest.approx(0.8)
    assert not shift_report(ref, confidence_profile(same, labels), 0.1, 0.15, 0.15)["shifted"]
    angry = _onehot(np.array([2] * 60 + [0] * 40), c, 0.5)  # neutral faces read as the third class, less sure
    rep = shift_report(ref, confidence_profile(angry, labels), 0.1, 0.15, 0.15)
    assert rep["shifted"] and set(rep["failed"]) == {"confidence_drop", "mix_gap_excess"}
    assert mix_gap(np.array([0, 0]), np.array([1, 1]), 2) == 1.0
    assert shift_report(None, confidence_profile(angry, labels), 0.1, 0.15, 0.15)["failed"] == ["mix_gap_excess"]


def test_shift_report_flags_labels_cleaner_than_the_models_training_labels():
    """Issue 17: news-like photos whose labels are right, scored by a model trained on FER2013's noisier labels,
    were relabelled where the model follows its training labels' conventions. The guard compares the labels'
    label-free accuracy estimate with the training labels' and sends the relabels to review."""
    from ferclean.relabel import collection_shift

    c, n = 5, 6000
    classes = [str(i) for i in range(c)]
    ref = {"mean_max_p": 0.8, "label_accuracy": 0.62}  # the training labels, estimated out of fold
    for label_acc, shifted in ((0.62, False), (0.66, False), (0.9, True)):
        _, lab, net, au = _noisy_views(n, c, {"label": label_acc, "model": 0.7, "au": 0.6}, seed=5)
        rep = collection_shift({"confidence_profile": ref}, _onehot(net, c), [classes[k] for k in lab], classes,
                               _onehot(au, c, 0.6), RelabelConfig())
        gain = rep["checks"]["label_accuracy_gain"]
        assert gain["value"] == pytest.approx(label_acc - 0.62, abs=0.03)
        assert rep["shifted"] is shifted and (rep["failed"] == ["label_accuracy_gain"]) is shifted
        assert rep["collection"]["label_accuracy"] == pytest.approx(label_acc, abs=0.03)
    # a model saved without the reference, or a collection without an AU view: no such check
    rep = collection_shift({"confidence_profile": {"mean_max_p": 0.8}}, _onehot(net, c), [classes[k] for k in lab],
                           classes, _onehot(au, c, 0.6), RelabelConfig())
    assert "label_accuracy_gain" not in rep["checks"]
    rep = collection_shift({"confidence_profile": ref}, _onehot(net, c), [classes[k] for k in lab], classes, None,
                           RelabelConfig())
    assert "label_accuracy_gain" not in rep["checks"]
    assert not shift_report(ref, {"label_accuracy": 0.7}, 0.1, 0.15, 0.15, max_label_accuracy_gain=0.1)["shifted"]


def test_label_accuracy_given_model_uses_the_training_time_model_accuracy():
    from ferclean.noise import label_accuracy_given_model

    _, lab, net, _ = _noisy_views(20000, 5, {"label": 0.8, "model": 0.6, "au": 0.5}, seed=3)
    est = label_accuracy_given_model(lab, _onehot(net, 5), model_accuracy=0.6)
    assert est["label_accuracy"] == pytest.approx(0.8, abs=0.03)
    # a model weaker on this collection than at training (shift) makes the labels look better, never worse
    assert label_accuracy_given_model(lab, _onehot(net, 5), model_accuracy=0.7)["label_accuracy"] < est["label_accuracy"]


def test_relabel_floor_sends_guesses_to_review():
    _, lab, net, _ = _noisy_views(2000, 3, {"label": 0.6, "model": 0.9, "au": 0.5}, seed=4)
    probs = _onehot(net, 3, 0.7)  # the model's suggestions all carry p = 0.7
    cfg = RelabelConfig(calibrate=False, trust="off")
    low = decide(lab, probs, None, None, cfg.model_copy(update={"relabel_floor": 0.6}))
    high = decide(lab, probs, None, None, cfg.model_copy(update={"relabel_floor": 0.75}))
    assert (low.action == "relabel").sum() > 100 and not (high.action == "relabel").any()
    assert ((low.action == "relabel") <= (high.action == "review")).all()  # the same samples, now for review


def test_score_collection_guard_sends_relabels_to_review_and_says_so(tmp_path):
    """relabel-collection's score stage: a collection the model is far less sure about than about its own
    training data gets no relabels, reason domain_shift, and the summary and runs.counts say so."""
    import json

    from test_train import make_store, tiny_cfg

    from ferclean.model_dir import ModelDir
    from ferclean.relabel import score_collection
    from ferclean.runs import open_run
    from ferclean.train import run_train

    store, _ = make_store(tmp_path, n=60)
    with open_run(store, "train", {}) as run:
        run_train(store, run, tiny_cfg(methods=["ce"], final_method="ce", epochs=2), progress=False)
    md = ModelDir.of_run(store.root)
    meta = md.meta()
    assert {"mean_max_p", "pred_mix", "mix_gap"} <= set(meta["confidence_profile"])
    noise = np.asarray(meta["label_noise"])  # the training data's noise matrix, for bounded collection noise
    assert noise.shape == (len(meta["classes"]),) * 2 and np.allclose(noise.sum(axis=0), 1.0, atol=1e-3)
    cfg = RelabelConfig(relabel_floor=0.0, trust="off", collection_noise="collection")
    with open_run(store, "relabel-collection", {}) as run:
        plain = score_collection(store, run, md, cfg)
    assert not plain["domain_shift"]["shifted"] and plain["actions"].get("relabel", 0) > 0
    assert plain["collection_noise"].startswith("the collection's own (collection_noise: collection)")
    with open_run(store, "relabel-collection", {}) as run:
        assert "capped at the model's training-data noise" in score_collection(store, run, md, RelabelConfig())[
            "collection_noise"]
    md.write_meta({**meta, "confidence_profile": {**meta["confidence_profile"], "mean_max_p": 1.0}})
    with open_run(store, "relabel-collection", {}) as run:
        guarded = score_collection(store, run, md, cfg)
        run_id = run.run_id
    assert guarded["domain_shift"]["shifted"] and guarded["domain_shift"]["failed"] == ["confidence_drop"]
    assert "relabel" not in guarded["actions"] and "review" in guarded["domain_shift"]["action"]
    rows = store.read("relabels").to_pandas()
    rows = rows[rows.run_id == run_id]
    assert rows.reasons.map(lambda r: "domain_shift" in list(r)).sum() == plain["actions"]["relabel"]
    counts = json.loads(store.read("runs").to_pandas().set_index("run_id").loc[run_id, "counts"])
    assert counts["relabel.domain_shift"] == 1


def test_embedding_spread_sees_features_unlike_the_training_data():
    rng = np.random.default_rng(5)
    probs = _onehot(rng.integers(0, 3, 500), 3)
    train = confidence_profile(probs, embeddings=rng.normal(0, 1, (500, 8)))
    assert train["emb_spread"] == pytest.approx(1.0, abs=1e-6) and len(train["emb_mean"]) == 8
    same = confidence_profile(probs, embeddings=rng.normal(0, 1, (500, 8)), reference=train)
    far = confidence_profile(probs, embeddings=rng.normal(2, 1, (500, 8)), reference=train)
    assert "emb_mean" not in same and same["emb_spread"] == pytest.approx(1.0, abs=0.15)
    assert not shift_report(train, same, 0.1, 0.15, 0.15)["shifted"]
    rep = shift_report(train, far, 0.1, 0.15, 0.15)
    assert rep["failed"] == ["embedding_spread"] and rep["checks"]["embedding_spread"]["value"] > 4


def test_bounded_joint_caps_each_transition_at_the_reference_rate():
    j = np.array([[0.30, 0.10, 0.00], [0.05, 0.20, 0.10], [0.05, 0.00, 0.20]])
    ref = np.array([[0.9, 0.0, 0.1], [0.1, 1.0, 0.5], [0.0, 0.0, 0.4]])  # given i | true j
    b = bounded_joint(j, ref)
    np.testing.assert_allclose(b.sum(axis=0), j.sum(axis=0))  # the true-class marginal is kept
    nm, nj = noise_matrix(b), noise_matrix(j)
    off = 1 - np.eye(3)
    assert (nm * off <= np.minimum(nj, ref) * off + 1e-12).all()
    assert nm[2, 0] == 0.0 and nm[0, 1] == 0.0  # transitions the reference never showed carry no noise
    assert nm[1, 0] == pytest.approx(0.1) and nm[1, 2] == pytest.approx(nj[1, 2]) == pytest.approx(1 / 3)  # capped / kept
    np.testing.assert_allclose(bounded_joint(j, np.ones((3, 3))), j)  # a loose reference changes nothing


def _collection(n: int, seed: int = 0):
    """Three classes; a scoring model that reads 30 % of true class-0 faces as class 2 (p 0.7), else right."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    pred = np.where((truth == 0) & (rng.random(n) < 0.3), 2, truth)
    probs = np.full((n, 3), 0.15)
    probs[np.arange(n), pred] = 0.7
    return rng, truth, probs


def test_bounded_noise_keeps_right_labels_that_a_shifted_model_misreads():
    """The web-photo failure (issue 17): right labels, a model that misreads neutral faces as angry under a
    domain shift. The collection's own confident joint counts that misreading as label noise and relabels;
    capped at the model's training-data noise, in which true-angry faces were never labelled neutral, it
    does not. Label errors of a kind the training data showed are still relabelled."""
    rng, truth, probs = _collection(3000)
    ref = np.array([[0.8, 0.0, 0.0], [0.2, 1.0, 0.0], [0.0, 0.0, 1.0]])  # given i | true j: 0 labelled 1
    labels = truth.copy()
    base = {"calibrate": False, "trust": "off", "relabel_floor": 0.0}
    coll = decide(labels, probs, None, None, RelabelConfig(collection_noise="collection", **base), reference_noise=ref)
    bound = decide(labels, probs, None, None, RelabelConfig(**base), reference_noise=ref)
    assert (coll.action == "relabel").sum() > 0.05 * len(labels)  # every relabel here is wrong
    assert (bound.action == "relabel").sum() == 0
    assert ((bound.action == "review") == (coll.action != "keep")).all()  # the flags are the same
    # a known kind of label error: 20 % of true class-0 faces labelled 1, the model right about them
    flip = (truth == 0) & (rng.random(len(truth)) < 0.2) & (probs.argmax(axis=1) == 0)
    labels = np.where(flip, 1, truth)
    sharp = probs ** 3 / (probs ** 3).sum(axis=1, keepdims=True)  # p 0.98: strong enough evidence
    bound = decide(labels, sharp, None, None, RelabelConfig(**base), reference_noise=ref)
    rel = bound.action == "relabel"
    assert rel.sum() > 0.5 * flip.sum() and (bound.suggested[rel] == truth[rel]).mean() > 0.9


def test_trust_margin_gives_a_near_tie_to_the_labels():
    """With the network estimated only a hair stronger than the labels, trust_margin (default 0.05) treats it
    as weaker: the relabel floor applies."""
    _, truth, probs = _collection(2000, seed=3)
    probs = probs * 0.6 + 0.4 / 3  # p(suggested) 0.55, below a floor of 0.6
    labels = np.where(np.random.default_rng(4).random(len(truth)) < 0.3, (truth + 1) % 3, truth)
    cfg = {"calibrate": False, "relabel_floor": 0.6}
    tie = decide(labels, probs, None, None, RelabelConfig(trust_margin=0.0, **cfg), label_accuracy=0.70,
                 model_accuracy=0.71)
    margin = decide(labels, probs, None, None, RelabelConfig(**cfg), label_accuracy=0.70,
                    model_accuracy=0.71)
    assert (tie.action == "relabel").sum() > 0 and (margin.action == "relabel").sum() == 0


def test_relabel_collection_says_when_an_old_model_cannot_cap_the_noise():
    from ferclean.relabel import _collection_noise_summary

    assert "saved without label_noise" in _collection_noise_summary(RelabelConfig(), {})
    assert "capped" in _collection_noise_summary(RelabelConfig(), {"label_noise": [[1.0]]})


def test_au_view_weight_rises_only_when_the_network_is_weaker_than_labels_and_au_view():
    """The AU view counts more (au_view_weight_weak) only where the label-free estimates put the network below
    the labels and below the AU view: a small collection whose folds barely learn."""
    cfg = RelabelConfig()
    weak_net = {"label_accuracy": 0.64, "model_accuracy": 0.43, "au_view_accuracy": 0.69}
    assert au_view_weight_for(cfg, weak_net) == cfg.au_view_weight_weak != cfg.au_view_weight
    strong_net = {"label_accuracy": 0.57, "model_accuracy": 0.84, "au_view_accuracy": 0.77}
    assert au_view_weight_for(cfg, strong_net) == cfg.au_view_weight
    weak_au = {"label_accuracy": 0.73, "model_accuracy": 0.74, "au_view_accuracy": 0.65}  # near tie, AU view weakest
    assert au_view_weight_for(cfg, weak_au) == cfg.au_view_weight
    assert au_view_weight_for(cfg, None) == cfg.au_view_weight
    assert au_view_weight_for(cfg.model_copy(update={"trust": "off"}), weak_net) == cfg.au_view_weight
    assert au_view_weight_for(cfg.model_copy(update={"class_prior": [0.5, 0.5]}), weak_net) == cfg.au_view_weight


def test_a_weak_network_lets_the_stronger_au_view_choose_the_relabels():
    """Network 45 % right, AU view 80 %, labels 60 %: the verdicts say which weight they used, and with the AU
    view weighted up the label errors both views agree on are relabelled, and more of them rightly."""
    c = 4
    truth, lab, net, au = _noisy_views(3000, c, {"label": 0.6, "model": 0.45, "au": 0.8}, seed=5)
    classes = ["a", "b", "c", "d"]
    names = [classes[k] for k in lab]
    ids = [f"s{i}" for i in range(3000)]

    def gain(cfg: RelabelConfig) -> tuple[int, dict]:
        trust: dict = {}
        t = verdict_rows(ids, names, classes, _onehot(net, c, 0.6), None, None, np.ones(3000, bool), [None] * 3000,
                         cfg, "r", "ce", au_probs=_onehot(au, c, 0.6), trust=trust)
        act = np.array(t["action"].to_pylist())
        sug = np.array([classes.index(x) for x in t["label_suggested"].to_pylist()])
        r = act == "relabel"
        return int((sug[r] == truth[r]).sum() - (lab[r] == truth[r]).sum()), trust

    g_weak, trust = gain(RelabelConfig())
    g_fixed, fixed = gain(RelabelConfig(au_view_weight_weak=RelabelConfig().au_view_weight))
    assert trust["au_view_weight"] == RelabelConfig().au_view_weight_weak
    assert fixed["au_view_weight"] == RelabelConfig().au_view_weight
    assert g_weak > g_fixed >= 0


def test_labels_cleaner_than_the_shared_errors_suggest_get_the_two_view_estimate():
    """relabel-collection on right labels (issue 17, other-domain photos): the network and the AU view share
    errors (both learnt from the same kind of labels), so the three-view estimate reads their agreement as both
    being right and puts the labels too low. With the model's training-time accuracy the two-view estimate sees
    the labels agree with the network more than that accuracy explains; the labels get the larger estimate, and
    fewer right labels are relabelled."""
    from ferclean.noise import rule_accuracies, view_counts
    from ferclean.relabel import verdicts

    c, n = 5, 20000
    rng = np.random.default_rng(7)
    truth = rng.integers(0, c, n)
    other = lambda: (truth + rng.integers(1, c, n)) % c  # noqa: E731
    labels = np.where(rng.random(n) < 0.95, truth, other())
    net = np.where(rng.random(n) < 0.65, truth, other())
    au = np.where(net != truth, np.where(rng.random(n) < 0.6, net, other()),
                  np.where(rng.random(n) < 0.6, truth, other()))  # copies the network's mistakes 60 % of the time
    net_p, au_p = _onehot(net, c, 0.7), _onehot(au, c, 0.6)
    cfg = RelabelConfig(calibrate=False)
    k = view_counts(labels, net_p, au_p)
    three = rule_accuracies(k, cfg)
    both = rule_accuracies(k, cfg, model_accuracy=0.65)
    assert three["label_accuracy"] < 0.85 and "label_estimate" not in three  # shared errors: labels look worse
    assert both["label_accuracy"] == pytest.approx(0.95, abs=0.04) and both["label_estimate"] == "two views"
    assert both["model_accuracy"] == three["model_accuracy"]
    names = [str(i) for i in range(c)]
    args = ([f"s{i}" for i in range(n)], [names[i] for i in labels], names, net_p, None, None, np.ones(n, bool),
            [None] * n, cfg)
    without = verdicts(*args, au_probs=au_p)
    with_model = verdicts(*args, au_probs=au_p, model_accuracy=0.65)
    assert (with_model.action == "relabel").sum() < 0.5 * (without.action == "relabel").sum()

"""The verdict rule part by part (issue 16): :func:`ferclean.noise.decide_parts` streams the collection
statistics (temperature, confident joint, trust shrink, the k-lowest support cut) and then decides each part;
its decisions must equal the whole-collection :func:`ferclean.noise.decide` exactly, for any part sizes."""

from __future__ import annotations

import numpy as np
import pytest

from ferclean.noise import (
    RelabelConfig,
    calibrate_temperature,
    confident_joint,
    decide,
    decide_parts,
    kth_smallest,
)

FIELDS = ("action", "suggested", "p_original", "p_suggested", "margin", "support", "priority", "p_right",
          "p_label_right")


def random_case(n: int = 1500, c: int = 7, seed: int = 0, unlabelled: float = 0.1, ties: bool = False):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, c, n)
    labels = np.where(rng.random(n) < 0.25, rng.integers(0, c, n), true)
    labels[rng.random(n) < unlabelled] = -1
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), true] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if ties:  # repeated rows: equal supports at the k-lowest cut, broken by row order
        probs[n // 2 :] = probs[: n - n // 2]
        labels[n // 2 :] = labels[: n - n // 2]
    alpha = rng.random(n).astype(np.float32)
    sem = rng.random((n, c)).astype(np.float32)
    return labels, probs, alpha, sem


def split(arrays, size: int):
    n = len(arrays[0])
    return lambda: [tuple(None if a is None else a[s : s + size] for a in arrays) for s in range(0, n, size)]


def assert_same(whole, parts):
    for f in FIELDS:
        a = getattr(whole, f)
        b = None if a is None else np.concatenate([getattr(p, f) for p in parts])
        if a is None:
            assert all(getattr(p, f) is None for p in parts), f
        elif a.dtype == object:
            assert (a == b).all(), f
        else:
            np.testing.assert_array_equal(a, b, err_msg=f)
    assert whole.reasons == [r for p in parts for r in p.reasons]
    for p in parts:
        assert p.temperature == whole.temperature and p.shrink == whole.shrink
        if whole.joint is not None:
            np.testing.assert_array_equal(p.joint, whole.joint)


CONFIGS = {
    "bayes": RelabelConfig(),
    "bayes_prior_trust": RelabelConfig(class_prior=[0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1]),
    "bayes_flag_below": RelabelConfig(bayes_flag_below=0.3),
    "bayes_bounded": RelabelConfig(collection_noise="bounded"),
    "threshold": RelabelConfig(rule="threshold", semantic_weight=0.25, borderline=0.1),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("size", [1, 97, 512, 1499, 5000])
def test_parts_equal_whole_collection(name, size):
    labels, probs, alpha, sem = random_case(seed=len(name))
    cfg = CONFIGS[name]
    kw = {"label_accuracy": 0.7, "model_accuracy": 0.6,
          "reference_noise": np.full((7, 7), 0.02) + np.eye(7) * 0.86 if name == "bayes_bounded" else None}
    whole = decide(labels, probs, alpha, sem, cfg, **kw)
    parts = list(decide_parts(split((labels, probs, alpha, sem), size), cfg, **kw))
    assert len(parts) == -(-len(labels) // size)
    assert_same(whole, parts)
    assert (whole.action != "keep").sum() > 100  # the case exercises the rule


@pytest.mark.parametrize("size", [3, 250, 751])
def test_tied_supports_at_the_cut_follow_row_order(size):
    labels, probs, _, _ = random_case(n=1000, seed=5, ties=True)
    whole = decide(labels, probs, None, None, RelabelConfig())
    parts = list(decide_parts(split((labels, probs, None, None), size), RelabelConfig()))
    assert_same(whole, parts)
    low = np.array(["low_confidence" in r for r in whole.reasons])
    flagged_support = whole.support[low]
    cut = flagged_support.max()
    # the case has a tie at the cut: a labelled row with support == cut is flagged, an equal one later is not
    assert ((whole.support == cut) & ~low & (labels >= 0)).any()


def test_kth_smallest_is_exact_with_ties():
    rng = np.random.default_rng(1)
    v = np.round(rng.random(5000), 3)  # many ties
    v[:10] = 0.0
    parts = lambda: [v[i : i + 333] for i in range(0, len(v), 333)]
    for k in (1, 10, 11, 2500, 4999, 5000):
        val, m = kth_smallest(parts, k)
        s = np.sort(v, kind="stable")
        assert val == s[k - 1]
        assert m == k - int((v < val).sum())


def test_one_part_helpers_match_the_collection_functions():
    labels, probs, _, _ = random_case(n=400, seed=3, unlabelled=0)
    t = calibrate_temperature(probs, labels)
    assert 0.2 <= t <= 5.0
    j = confident_joint(labels, probs)
    assert j.sum() == pytest.approx(1.0) and j.shape == (7, 7)


@pytest.mark.parametrize("size", [64, 450, 10**6])
def test_verdicts_by_part_equal_whole_collection_verdicts(size):
    """The score stage's writer (ferclean.relabel.verdicts_by_part) gives the rows, trust summary and action
    counts of the whole-collection `verdicts` (AU view, trust auto, domain-shift review reason, flags)."""
    import pyarrow as pa

    from ferclean.relabel import verdicts, verdicts_by_part

    classes = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "angry"]
    labels, probs, alpha, sem = random_case(n=900, seed=11)
    rng = np.random.default_rng(2)
    au = rng.dirichlet(np.ones(7), len(labels))
    au[rng.random(len(labels)) < 0.1] = np.nan
    names = [classes[y] if y >= 0 else None for y in labels]
    ids = [f"s{i:05d}" for i in range(len(labels))]
    quality = [["blurry"] if i % 37 == 0 else [] for i in range(len(labels))]
    cfg = RelabelConfig()
    probs32 = probs.astype(np.float32)
    kw = {"au_probs": au, "review_reason": "domain_shift", "model_accuracy": 0.55, "labels": labels,
          "reference_noise": (np.full((7, 7), 0.03) + np.eye(7) * 0.79).tolist()}
    trust_whole: dict = {}
    v = verdicts(ids, names, classes, probs32.astype(np.float64), alpha, sem, np.ones(len(labels), bool), quality,
                 cfg, trust=trust_whole, **kw)
    whole = v.rows(0, len(labels), ids, names, "r", "ulcag").drop_columns(["decided_at"])
    trust_parts: dict = {}
    actions: dict = {}
    parts = list(verdicts_by_part(pa.array(ids), pa.array(names, pa.string()), classes, probs32, alpha, sem, quality,
                                  cfg, "r", "ulcag", part_size=size, trust=trust_parts, actions=actions, **kw))
    got = pa.concat_tables(parts).drop_columns(["decided_at"])
    assert got.equals(whole)
    assert trust_parts == trust_whole and trust_whole["relabels"] > 0 and "relabel_precision_est" in trust_whole
    a, k = np.unique(v.action.astype(str), return_counts=True)
    assert actions == dict(zip(a.tolist(), k.tolist(), strict=True))
    assert "review" in actions and len(parts) == -(-len(labels) // size)

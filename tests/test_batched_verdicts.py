"""The verdict rule in batches (issue 16): collection statistics from passes over parts, then each part decided
alone, give exactly the whole-collection verdicts, whatever the batch size (audit prior, AU view and the
model's reference noise included)."""

from __future__ import annotations

import numpy as np
import pytest

from ferclean.au_view import combine
from ferclean.noise import RelabelConfig, add_trust_sums, rule_stats, trust_from_sums
from ferclean.relabel import collection_rule_stats, part_verdicts, verdicts

C = 5
CLASSES = [f"c{i}" for i in range(C)]


def _case(n: int = 700, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    true = rng.integers(0, C, n)
    labels = np.where(rng.random(n) < 0.75, true, rng.integers(0, C, n))
    labels[rng.random(n) < 0.08] = -1  # unlabelled rows
    logits = rng.normal(0, 1, (n, C))
    logits[np.arange(n), true] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    au = rng.dirichlet(np.ones(C), n)
    au[np.arange(n), true] += 0.5
    au /= au.sum(axis=1, keepdims=True)
    au[rng.random(n) < 0.1] = np.nan  # no AU row for these
    probs = np.round(probs, 3)  # ties in the flag ranking (equal posteriors)
    probs /= probs.sum(axis=1, keepdims=True)
    ref = rng.dirichlet(np.ones(C) * 0.5, C).T * 0.3 + np.eye(C) * 0.7  # a noise matrix P(given i | true j)
    quality = [["blurry"] if i % 17 == 0 else [] for i in range(n)]
    return {"ids": [f"s{i:04d}" for i in range(n)], "labels": labels, "probs": probs, "au": au,
            "alpha": rng.random(n).astype(np.float32), "sem": rng.random((n, C)).astype(np.float32),
            "quality": quality, "ref": ref}


CONFIGS = {
    "default": RelabelConfig(),
    "audit_prior": RelabelConfig(class_prior=[0.3, 0.25, 0.2, 0.15, 0.1], train_prior=[0.2] * 5),
    "trust_off_collection_noise": RelabelConfig(trust="off", collection_noise="collection", au_view_weight=1.0),
    "flag_below": RelabelConfig(bayes_flag_below=0.3, review_flags=["blurry"]),
    "threshold": RelabelConfig(rule="threshold"),
}


def _batched(x: dict, cfg: RelabelConfig, size: int, model_accuracy: float | None):
    n = len(x["ids"])
    chunks = [slice(a, min(a + size, n)) for a in range(0, n, size)]
    stats, acc = collection_rule_stats(lambda: ((x["labels"][s], x["probs"][s], x["au"][s]) for s in chunks), cfg,
                                       model_accuracy, x["ref"])
    out, sums = [], None
    for s in chunks:
        v = part_verdicts(x["ids"][s], CLASSES, x["labels"][s], combine(x["probs"][s], x["au"][s], stats.au_weight),
                          x["au"][s], x["alpha"][s], x["sem"][s], np.ones(s.stop - s.start, bool), x["quality"][s],
                          cfg, stats, s.start, review_reason=None)
        out.append(v)
        sums = add_trust_sums(sums, v.trust_sums)
    trust = trust_from_sums(sums, stats.lam if cfg.rule == "bayes" else 1.0, acc)
    if x["au"] is not None:
        trust["au_view_weight"] = stats.au_weight  # as score_collection records it
    return out, trust


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("model_accuracy", [None, 0.9])
def test_batched_verdicts_equal_the_whole_collection(name, model_accuracy):
    x = _case()
    cfg = CONFIGS[name]
    trust: dict = {}
    whole = verdicts(x["ids"], [CLASSES[k] if k >= 0 else None for k in x["labels"]], CLASSES, x["probs"],
                     x["alpha"], x["sem"], np.ones(len(x["ids"]), bool), x["quality"], cfg, au_probs=x["au"],
                     trust=trust, model_accuracy=model_accuracy, labels=x["labels"], reference_noise=x["ref"])
    assert (whole.action == "relabel").any() and (whole.action == "review").any()  # a case with something to decide
    for size in (1, 7, 64, 333, 700, 10_000):
        parts, trust_b = _batched(x, cfg, size, model_accuracy)
        def cat(f, parts=parts):
            return np.concatenate([f(v) for v in parts])
        assert np.array_equal(cat(lambda v: v.action), whole.action), size
        assert np.array_equal(cat(lambda v: v.final), whole.final), size
        assert np.array_equal(cat(lambda v: v.d.suggested), whole.d.suggested), size
        assert [r for v in parts for r in v.d.reasons] == whole.d.reasons, size
        for f in ("p_original", "p_suggested", "margin", "support", "priority", "p_right", "p_label_right"):
            got = [getattr(v.d, f) for v in parts]
            want = getattr(whole.d, f)
            if want is None:
                assert all(g is None for g in got), (size, f)
            else:
                assert np.array_equal(np.concatenate(got), want, equal_nan=True), (size, f)
        assert {v.d.temperature for v in parts} == {whole.d.temperature}
        assert trust_b == trust, size


def test_flag_ties_are_taken_in_collection_order():
    """Equal posteriors straddling the flag count: the rows flagged are the first ones, in any batching."""
    n = 200
    labels = np.tile(np.arange(2), n // 2)
    probs = np.full((n, 2), 0.5)  # every row has the same support
    probs[:20] = [[0.9, 0.1]]  # ... but these: half of them disagree with their label
    cfg = RelabelConfig(calibrate=False, trust="off")
    whole = verdicts([str(i) for i in range(n)], [str(k) for k in labels], ["0", "1"], probs, None, None,
                     np.ones(n, bool), [[]] * n, cfg, labels=labels)
    k = sum("low_confidence" in r for r in whole.d.reasons)
    assert 0 < k < n
    for size in (3, 50):
        chunks = [slice(a, min(a + size, n)) for a in range(0, n, size)]
        stats = rule_stats(lambda: ((labels[s], probs[s]) for s in chunks), cfg)  # noqa: B023
        assert len(stats.flag_ties) <= k
        flagged = []
        for s in chunks:
            v = part_verdicts([str(i) for i in range(s.start, s.stop)], ["0", "1"], labels[s], probs[s], None, None,
                              None, np.ones(s.stop - s.start, bool), [[]] * (s.stop - s.start), cfg, stats, s.start)
            flagged += ["low_confidence" in r for r in v.d.reasons]
        assert flagged == ["low_confidence" in r for r in whole.d.reasons]

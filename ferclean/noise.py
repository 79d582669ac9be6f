"""The pure noise maths of the verdict rule: no I/O, numpy in, numpy out.

Owned here and imported by both readers of the rule: the train stage (the final model trains on the
labels these verdicts give) and the relabel stage (the verdicts it writes). One :class:`RelabelConfig`
(the `relabel:` section of the user's config) drives both.

Rule (all thresholds in :class:`RelabelConfig`, vectorised in :func:`decide`):

0. probs are the network's, times the AU view's to the power `au_view_weight` when the train stage
   cross-fitted one (`ferclean.au_view`: a second opinion from the pseudo-AU intensities alone),
   renormalised; then temperature-calibrated to the given labels (`calibrate`, NLL over one scalar T).
1. support(y) = (1 - w) * p(y) + w * q(y), the out-of-sample probability of the given label y
   blended with the semantic similarity q = softmax(-sem_dist / tau) of the AU-graph branch
   (w = `semantic_weight` when semantic distances exist, else 0).
2. A sample is flagged when support(y) < `flag_below` (reason low_confidence), or when the model's
   argmax s != y with margin p(s) - p(y) >= `disagree_margin` (reason model_disagrees).
   semantic_mismatch (nearest template != y) and low_alpha (alpha < `low_alpha`) are reported as
   reasons and move a borderline sample (support < `flag_below` + `borderline`) into the flags.
3. A flagged sample is relabeled to s only on confident disagreement: p(s) >= `relabel_min_p`,
   margin >= `relabel_margin`, and (when semantic distances exist and `require_semantic_agreement`)
   the nearest semantic template is s. Every other flagged sample goes to review.
4. Unlabelled samples: relabel (assign s) when p(s) >= `relabel_min_p`, else review.
5. Samples without a face row: `no_face_action` (review by default) with reason no_face.
   faces.quality_flags are copied into `reasons`; flags listed in `review_flags` send a kept
   sample to review, flags in `drop_flags` drop it.

label_final: keep -> original, relabel -> suggested, review -> original (null when unlabelled),
drop -> null. priority (review order, higher first) = 1 - support(y).

`rule = "bayes"` (the default) replaces steps 1-3 by a noise-transition posterior in the spirit of
cleanlab's confident joint (:func:`bayes_posterior`): with the calibrated out-of-sample probs p(t|x) and
N[y, t] = P(given y | true t) estimated from the collection's own confident joint (no reference labels),
post(t) is proportional to p(t|x) * N[y, t] (times class_prior(t) / prior(t) when a reference class prior is
given). support(y) = post(y); flag the samples with the lowest post(y), as many as the confident joint
estimates to be mislabelled (1 - trace; or post(y) < `bayes_flag_below` when set); relabel to s = argmax post when
s != y and post(s) - post(y) >= `bayes_relabel_margin`; every other flagged sample goes to review (its
suggested label is the best class other than y). On the FER2013 train split against the FER+ plurality
(benchmarks/results/relabel_rules.md) the defaults took flag F1 from 0.626 to 0.707 (ce probs) and 0.672 to
0.688 (ulcag), final-label accuracy from 0.673 to 0.693 (ce; ulcag 0.650 -> 0.649: its probs are too weak to
relabel by). `rule = "threshold"` keeps steps 1-3 above.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from ferclean.flags import QUALITY_FLAGS


class RelabelConfig(BaseModel):
    """Thresholds of the verdict rule (see module docstring).

    Defaults were chosen on the out-of-fold scores of a 4,000-image FER2013 subset (32 px CNN):
    p(label) < 0.25 maximised flag F1 there, and only p(suggested) >= 0.7 with margin >= 0.5 gave
    relabels more often right than the original label (0.49 vs 0.42); weaker evidence goes to review.
    With prototype pseudo AUs the semantic distance (AUC 0.54) and alpha (AUC 0.57) ranked label
    errors far worse than p(label) (AUC 0.74) and blending them in lowered flag F1 (0.619 -> 0.584),
    so `semantic_weight` and `borderline` default to 0; the semantic branch still gates relabels.
    """

    method: str = Field("ulcag", description="which predictions to judge by")
    rule: Literal["bayes", "threshold"] = Field(
        "bayes", description="bayes: noise-transition posterior (bayes_* fields); threshold: flag_below/disagree_margin/"
        "relabel_min_p rule (the previous default)")
    bayes_flag_below: float | None = Field(None, ge=0, le=1, description="bayes rule: flag when the posterior of the "
                                           "given label is below; None = flag the share of labelled samples that the "
                                           "confident joint estimates to be mislabelled (1 - trace), lowest posterior first")
    bayes_relabel_margin: float = Field(0.0, ge=0, le=1, description="bayes rule: relabel when post(argmax) - "
                                        "post(label) reaches this (0 = whenever another class is more likely)")
    class_prior: list[float] | None = Field(None, description="bayes rule: reference class prior (class order of the "
                                            "predictions), e.g. the class shares of a reviewed sample; None = the "
                                            "collection's own estimated prior")
    train_prior: list[float] | None = Field(None, description="bayes rule with a class_prior: class shares of the "
                                            "labels the scoring model was trained on (the divisor of the prior shift); "
                                            "None = the labelled samples' class shares (right for cross-fitted "
                                            "scores); relabel-collection fills it from the model's model.json")
    audit_prior: bool = Field(True, description="bayes rule with class_prior None: use the class mix of the human "
                              "decisions on an audit sample (`ferclean review export OUT --audit N`) as the reference "
                              "class prior once at least audit_min of them exist")
    audit_min: int = Field(100, ge=1, description="audit decisions needed before their class mix is used")
    au_view_weight: float = Field(0.5, ge=0, le=4, description="weight w of the AU view's opinion: the rule sees "
                                  "p_network * p_au ** w, renormalised (ferclean.au_view; 0 = network only). Chosen on "
                                  "FER2013's real noise and 10 % synthetic noise, confirmed on 20/30 % "
                                  "(benchmarks/results/noise_synthetic.md)")
    init_model_weight: float = Field(
        0.5, ge=0, le=1, description="curate --init-model: the verdict rule sees (1 - w) * p_out-of-fold + w * p_init, "
        "where p_init is the init model's own opinion of the collection (it never saw these labels; the folds, "
        "fine-tuned on them, follow them). Chosen on 3,000 FER2013 train rows with a model from 8,000 others "
        "(w 0 / 0.25 / 0.5 / 0.75 / 1: +6.06 / +6.93 / +7.00 / +6.30 / +5.80 points), confirmed on the valid "
        "split: +3.34 -> +6.63 (benchmarks/results/init_ensemble.json)")
    trust: Literal["auto", "off"] = Field(
        "auto", description="bayes rule: a verdict rule that knows how strong its model is. auto: estimate without "
        "reference labels how often the given labels, the network and the AU view are right (three views whose errors "
        "are taken as independent: agreement method of moments, :func:`view_accuracies`), shrink the confident "
        "joint's noise towards the identity by estimated label noise / the joint's noise (a weak model's joint counts "
        "its own errors as label noise), and relabel only where that shrunk posterior puts the suggested label above "
        "the given one; the estimates go into the relabel summary. Needs the AU view; off: the joint as estimated")
    au_view_weight_weak: float = Field(
        1.0, ge=0, le=4, description="bayes rule with trust auto: the AU view's weight when the label-free estimates "
        "put the network below the labels (the `trust_margin` case, where the shrink and relabel_floor apply) and the "
        "AU view above the network, e.g. a small collection curated alone, whose folds barely learn (network 0.33 "
        "right vs the crowd, AU view 0.55 on the FER2013 valid split). Chosen on the out-of-fold scores of two "
        "curate runs on FER2013 train rows (3,000 and 8,000 rows): w 0.5 / 1 / 1.5 / 2 / 3 gave flag F1 0.690 / "
        "0.698 / 0.692 / 0.695 / 0.693 and +0.43 / +0.78 / +0.50 / +0.57 / +0.53 points (3,000), 0.692 / 0.695 / "
        "0.688 / 0.685 / 0.681 and +0.76 / +0.83 / +0.82 / +0.71 / +0.55 (8,000); benchmarks/results/"
        "view_weight.md. Not applied with an audit's class_prior")
    label_estimate: Literal["larger", "three_views"] = Field(
        "larger", description="bayes rule with trust auto, when the model's accuracy was estimated at training time "
        "(relabel-collection) and there is an AU view: larger: the given labels' accuracy is the larger of the "
        "three-view estimate and the two-view one (labels vs network, :func:`label_accuracy_from_counts`); "
        "three_views: the three-view estimate only (before). The network and the AU view share errors, which puts "
        "the labels too low in the three-view estimate; see :func:`rule_accuracies`")
    trust_margin: float = Field(
        0.05, ge=0, le=1, description="bayes rule with trust auto: the network counts as stronger than the labels "
        "(joint used as estimated, no relabel_floor) only when its estimated accuracy exceeds the labels' by at least "
        "this; a near tie goes to the labels (the estimates are optimistic about the network, whose errors the AU "
        "view shares). On news-like photos with right labels the estimates tied (labels 0.728, network 0.736) and "
        "the rule relabelled 6.3 % of faces, all wrongly; with 0.05, 3.5 %. The runs where the network is stronger "
        "(FER2013 train split +0.19, --init-model +0.115, relabel-collection in domain) are unaffected "
        "(benchmarks/results/shift_collection.md)")
    relabel_floor: float = Field(
        0.4, ge=0, le=1, description="bayes rule: relabel a labelled sample only when the calibrated p(suggested) "
        "reaches this, else review (a relabel at p = 0.19 is a guess whatever the noise model says). Chosen on the "
        "out-of-fold scores of 3,000 FER2013 train rows (32 px CNN, ulcag): 0 / 0.3 / 0.4 / 0.5 gave +0.0 / +0.3 / "
        "+0.4 / +0.4 points of final-label accuracy with trust auto (benchmarks/results/quality_small.md). Applied, "
        "like the trust shrink, only when the network is estimated weaker than the labels and no audit's class_prior "
        "is set (on the whole FER2013 train split, where it is stronger, the floor cost 0.5 points)")
    domain_shift_guard: bool = Field(
        True, description="relabel-collection: compare the collection with the model's training data "
        "(ferclean.domain_shift: confidence, predicted vs given class mix, AU-view agreement); when it is unlike "
        "them every relabel goes to review with the reason domain_shift and the summary says so")
    shift_max_confidence_drop: float = Field(0.10, ge=0, le=1, description="domain shift when the mean max "
                                             "probability falls more than this below the training data's")
    shift_max_mix_gap: float = Field(0.15, ge=0, le=1, description="domain shift when the predicted class mix is "
                                     "further (total variation) from the given labels' mix than on the training "
                                     "data by more than this")
    shift_max_au_agreement_drop: float = Field(0.15, ge=0, le=1, description="domain shift when the network and "
                                               "the AU view agree this much less often than on the training data")
    shift_max_embedding_spread: float = Field(
        1.5, ge=1, description="domain shift when the collection's backbone features spread around the training "
        "data's feature means this many times as much as the training data's own (set a priori, not tuned)")
    shift_max_label_accuracy_gain: float = Field(
        0.05, ge=0, le=1, description="domain shift when the collection's labels are estimated (three views, no "
        "reference labels) more accurate than the model's training labels were (out of fold, model.json "
        "confidence_profile.label_accuracy) by more than this: the model learnt a noisier labelling than this "
        "collection's, so where it disagrees with these labels it more likely follows its own training labels' "
        "conventions than finds an error (news-like photos with right labels, benchmarks/results/"
        "quality_small.md). Set to trust_margin's 0.05 a priori, not tuned")
    collection_noise: Literal["bounded", "collection"] = Field(
        "bounded", description="relabel-collection (a model trained elsewhere): which label-noise model relabels. "
        "collection: the confident joint of this collection's labels and the model's probabilities, which counts "
        "every disagreement the model has with these labels as label noise, including its own misreadings of faces "
        "unlike its training data and a labelling convention it never learnt; bounded: that joint with each "
        "transition P(given i | true j) capped at the rate the model's own training data showed "
        "(model.json label_noise, measured out of fold where the model was in its domain): a relabel needs a "
        "label error of a kind known to happen. Flags (review) still follow the collection's own joint")
    calibrate: bool = Field(True, description="temperature-scale probs to the given labels (NLL) before the rule, "
                            "so thresholds mean the same for every method; needs >= 50 labelled samples")
    fold: Literal["oof", "final"] = Field("oof", description="oof: cross-fitted folds >= 0; final: fold -1")
    flag_below: float = Field(0.25, ge=0, le=1, description="flag when support of the given label is below")
    disagree_margin: float = Field(0.25, ge=0, le=1, description="flag when p(argmax) - p(label) reaches this")
    borderline: float = Field(0.0, ge=0, le=1, description="support band above flag_below where semantic/alpha evidence flags (0 = off)")
    low_alpha: float = Field(0.35, ge=0, le=1, description="alpha below this is reason low_alpha")
    semantic_weight: float = Field(0.0, ge=0, le=1, description="weight of the semantic similarity in support (0 = off)")
    semantic_temperature: float = Field(0.1, gt=0, description="tau of q = softmax(-sem_dist / tau)")
    relabel_min_p: float = Field(0.70, ge=0, le=1, description="min p(suggested) to relabel")
    relabel_margin: float = Field(0.50, ge=0, le=1, description="min p(suggested) - p(label) to relabel")
    require_semantic_agreement: bool = Field(True, description="relabel only when the nearest template agrees")
    no_face_action: Literal["review", "drop"] = "review"
    review_flags: list[str] = Field(default_factory=list, description="quality flags that send a kept sample to review")
    drop_flags: list[str] = Field(default_factory=list, description="quality flags that drop a sample")
    issue_actions: dict[str, Literal["keep", "review", "drop"]] = Field(
        default_factory=lambda: {"duplicate": "drop", "split_leak": "drop", "not_a_face": "review",
                                 "conflicting_labels": "review", "outlier": "keep"},
        description="dataset_issues reason -> action (keep = reason only); read when that table exists")


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` returns, one entry per sample (arrays of length N).

    action: "keep" | "relabel" | "review" | "drop" (object array); suggested: class index the rule
    would assign; p_original: calibrated p(given label) (NaN unlabelled); p_suggested; margin =
    p_suggested - p_original; support: the rule's support of the given label; priority: review order
    (higher first); reasons: one list of reason codes per sample; temperature: the calibration T.
    """

    action: np.ndarray
    suggested: np.ndarray
    p_original: np.ndarray
    p_suggested: np.ndarray
    margin: np.ndarray
    support: np.ndarray
    priority: np.ndarray
    reasons: list[list[str]]
    temperature: float
    p_right: np.ndarray | None = None  # bayes rule: posterior (after the trust shrink) that label_final is right
    p_label_right: np.ndarray | None = None  # ... that the given label is right
    shrink: float = 1.0  # lam of shrink_joint the relabels were decided with (1 = joint as estimated)
    joint: np.ndarray | None = None  # bayes rule: the labelled samples' confident joint J[given, true]


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.2), np.log(5.0), 61))


def temperature_nll_sums(probs: np.ndarray, labels: np.ndarray, grid: np.ndarray | None = None) -> np.ndarray:
    """Sum over rows of the NLL of the given labels under p^(1/T), one entry per T of `grid` (labels >= 0):
    what :func:`calibrate_temperature` needs from a part of a collection."""
    grid = TEMPERATURE_GRID if grid is None else grid
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    rows = np.arange(len(labels))
    out = np.zeros(len(grid))
    for i, t in enumerate(grid):
        z = logp / t
        out[i] = float((np.logaddexp.reduce(z, axis=1) - z[rows, labels]).sum())
    return out


def pick_temperature(nll_sums: np.ndarray, n: int, grid: np.ndarray | None = None) -> float:
    """The T of `grid` with the lowest mean NLL (summed NLLs over `n` rows; the first one on ties)."""
    grid = TEMPERATURE_GRID if grid is None else grid
    best_t, best = 1.0, np.inf
    for t, s in zip(grid, nll_sums, strict=True):
        nll = float(s) / n
        if nll < best:
            best_t, best = float(t), nll
    return best_t


def calibrate_temperature(probs: np.ndarray, labels: np.ndarray,
                          grid: np.ndarray | None = None) -> float:
    """Temperature T minimising the NLL of the given labels under p^(1/T) (renormalised).

    probs: (N, C); labels: (N,) class indices (>= 0). Uses only the given (noisy) labels, never a
    reference, so out-of-fold probabilities of different methods end up on one scale.
    """
    return pick_temperature(temperature_nll_sums(probs, labels, grid), len(labels), grid)


def apply_temperature(probs: np.ndarray, t: float) -> np.ndarray:
    """p^(1/T) renormalised per row (= softmax of the logits divided by T)."""
    z = np.log(np.clip(probs, 1e-12, 1.0)) / t
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def joint_threshold_sums(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum of p_j over the rows labelled j, count of rows labelled j) per class j (labels >= 0)."""
    labels = np.asarray(labels, dtype=np.int64)
    c = probs.shape[1]
    counts = np.bincount(labels, minlength=c).astype(np.float64)
    sums = np.array([probs[labels == j, j].sum() for j in range(c)], dtype=np.float64)
    return sums, counts


def joint_thresholds(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-class threshold t_j = mean p_j over the rows labelled j (1 for a class nobody has)."""
    return np.array([sums[j] / counts[j] if counts[j] else 1.0 for j in range(len(counts))])


def joint_counts(labels: np.ndarray, probs: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """Confident-joint counts C[given i, true j] of some labelled rows under thresholds `thr`."""
    labels = np.asarray(labels, dtype=np.int64)
    c = probs.shape[1]
    ok = probs >= thr - 1e-6
    any_ok = ok.any(axis=1)
    guess = np.where(ok, probs, -1.0).argmax(axis=1)
    cj = np.zeros((c, c))
    np.add.at(cj, (labels[any_ok], guess[any_ok]), 1.0)
    return cj


def joint_from_counts(cj: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The calibrated joint from the counts: rows rescaled to the given label counts, total 1."""
    cj = cj / np.clip(cj.sum(axis=1, keepdims=True), 1e-12, None) * counts[:, None]
    return cj / max(float(cj.sum()), 1e-12)


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Calibrated confident joint J[given i, true j] (sums to 1), as cleanlab's `estimate_joint`.

    labels: (N,) class index >= 0; probs: (N, C) out-of-sample probabilities. Per-class threshold t_j =
    mean p_j over samples labelled j; a sample counts for the true class j with p_j >= t_j (the most
    probable one when several pass); rows are rescaled to the given label counts. No reference labels.
    (In parts: :func:`joint_threshold_sums`, :func:`joint_counts`, :func:`joint_from_counts`.)
    """
    labels = np.asarray(labels, dtype=np.int64)
    sums, counts = joint_threshold_sums(labels, probs)
    return joint_from_counts(joint_counts(labels, probs, joint_thresholds(sums, counts)), counts)


def noise_matrix(joint: np.ndarray) -> np.ndarray:
    """N[i, j] = P(given i | true j) from a joint; a true class with no mass keeps its label (N[j, j] = 1)."""
    col = joint.sum(axis=0, keepdims=True)
    nm = np.divide(joint, col, out=np.zeros_like(joint), where=col > 0)
    empty = col[0] <= 0
    nm[empty, empty] = 1.0
    return nm


def bayes_posterior(labels: np.ndarray, probs: np.ndarray, joint: np.ndarray | None = None,
                    class_prior: Sequence[float] | None = None,
                    train_prior: Sequence[float] | None = None) -> np.ndarray:
    """post(t) proportional to p(t|x) * P(given y | true t) [* class_prior(t) / train_prior(t)]; rows sum to 1.

    labels: (N,) class index, -1 = unlabelled (then post = p, prior-shifted when class_prior is given);
    probs: (N, C); joint: confident joint (default: :func:`confident_joint` on the labelled rows);
    class_prior: optional reference prior of the true classes (e.g. an audit's class mix);
    train_prior: the class shares of the labels the model that gave `probs` was trained on, which its
    probabilities carry (the prior-shift correction of Saerens et al. 2002 divides by it); default: the
    labelled rows' class shares, else the joint's true-class marginal. (The joint's marginal was the
    divisor before; it nearly vanishes for a rare class, e.g. 0.001 for disgust, which then got
    multiplied ~10x: benchmarks/results/noise_real_full.md, "audit prior".)
    """
    labels = np.asarray(labels, dtype=np.int64)
    labelled = labels >= 0
    c = probs.shape[1]
    if joint is None:
        joint = confident_joint(labels[labelled], probs[labelled]) if labelled.any() else np.eye(c) / c
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    nm = noise_matrix(joint)
    logp = logp + np.where(labelled[:, None], np.log(np.clip(nm[np.maximum(labels, 0)], 1e-6, 1.0)), 0.0)
    if class_prior is not None:
        ref = np.clip(np.asarray(class_prior, dtype=np.float64), 1e-6, None)
        if train_prior is not None:
            own = np.asarray(train_prior, dtype=np.float64)
        elif labelled.any():
            own = np.bincount(labels[labelled], minlength=c).astype(np.float64)
        else:
            own = joint.sum(axis=0)
        own = np.clip(own, 1e-6 * max(float(own.sum()), 1e-12), None)
        logp = logp + np.log(ref / ref.sum()) - np.log(own / own.sum())
    return _softmax(logp)


def view_counts(labels: np.ndarray, net_probs: np.ndarray, au_probs: np.ndarray | None) -> dict[str, np.ndarray]:
    """What the label-free view accuracies need from some rows, as counts that add up over parts:
    three views (given label, network argmax, AU-view argmax) on the labelled rows that have all three:
    rows `n3`, pairwise agreements `agree3` (label-net, label-au, net-au), class counts `mix3` (3, C);
    two views (label, network) on the labelled rows: `n2`, `agree2`, `mix2` (2, C). `au`: 1 with an AU view."""
    labels = np.asarray(labels, dtype=np.int64)
    c = net_probs.shape[1]
    net_ok = ~np.isnan(net_probs).any(axis=1)
    net = np.where(net_ok, np.nan_to_num(net_probs).argmax(axis=1), 0)
    ok2 = (labels >= 0) & net_ok
    out = {"n2": np.array(int(ok2.sum())), "agree2": np.array(int((labels[ok2] == net[ok2]).sum())),
           "mix2": np.stack([np.bincount(labels[ok2], minlength=c), np.bincount(net[ok2], minlength=c)]),
           "au": np.array(int(au_probs is not None)), "n3": np.array(0), "agree3": np.zeros(3, np.int64),
           "mix3": np.zeros((3, c), np.int64)}
    if au_probs is not None:
        ok = ok2 & ~np.isnan(au_probs).any(axis=1)
        views = [labels[ok], net[ok], au_probs[ok].argmax(axis=1)]
        out["n3"] = np.array(int(ok.sum()))
        out["agree3"] = np.array([int((views[i] == views[j]).sum()) for i, j in ((0, 1), (0, 2), (1, 2))])
        out["mix3"] = np.stack([np.bincount(v, minlength=c) for v in views])
    return out


def add_counts(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Two parts' :func:`view_counts` together (`au` stays 1 only when both parts had an AU view)."""
    if a is None:
        return dict(b)
    return {k: np.minimum(a[k], b[k]) if k == "au" else a[k] + b[k] for k in a}


def view_accuracies_from_counts(k: dict[str, np.ndarray], min_rows: int = 50) -> dict[str, float] | None:
    """:func:`view_accuracies` from :func:`view_counts` (of one part or added over many)."""
    n = int(k["n3"])
    if not int(k["au"]) or n < min_rows:
        return None
    mix = [k["mix3"][i] / n for i in range(3)]
    pairs = {(0, 1): 0, (0, 2): 1, (1, 2): 2}

    def kappa(i: int, j: int) -> float:
        agree = int(k["agree3"][pairs[(i, j)]]) / n
        chance = float(mix[i] @ mix[j])
        return max((agree - chance) / max(1.0 - chance, 1e-9), 1e-6)

    k_ln, k_la, k_na = kappa(0, 1), kappa(0, 2), kappa(1, 2)
    rel = {"label": np.sqrt(k_ln * k_la / k_na), "model": np.sqrt(k_ln * k_na / k_la),
           "au_view": np.sqrt(k_la * k_na / k_ln)}
    base = float(mix[0] @ mix[0])
    out = {f"{key}_accuracy": round(float(np.clip(r + (1 - min(r, 1.0)) * base, 0.0, 1.0)), 4) for key, r in rel.items()}
    out["rows"] = n
    return out


def view_accuracies(labels: np.ndarray, net_probs: np.ndarray, au_probs: np.ndarray | None,
                    min_rows: int = 50) -> dict[str, float] | None:
    """Label-free accuracies of three views of the true class: the given labels, the network's argmax and
    the AU view's argmax (no reference labels).

    With conditionally independent errors, the chance-corrected agreement (Cohen's kappa) of two views is
    about the product of their reliabilities k_i, so k_label = sqrt(kappa_ln * kappa_la / kappa_na) and
    likewise for the others; accuracy a = k + (1 - k) * sum_c m_c^2 (m: the given labels' class mix).
    Errors that the views share (the network and the AU view learnt from the same noisy labels) make this
    optimistic about all three. None without an AU view or with fewer than `min_rows` rows having all three.
    """
    if au_probs is None:
        return None
    return view_accuracies_from_counts(view_counts(labels, net_probs, au_probs), min_rows)


def label_accuracy_from_counts(k: dict[str, np.ndarray], model_accuracy: float,
                               min_rows: int = 50) -> dict[str, float] | None:
    """:func:`label_accuracy_given_model` from :func:`view_counts`."""
    n = int(k["n2"])
    if n < min_rows:
        return None
    m_l, m_n = k["mix2"][0] / n, k["mix2"][1] / n
    chance = float(m_l @ m_n)
    kappa = max((int(k["agree2"]) / n - chance) / max(1.0 - chance, 1e-9), 1e-6)
    base = float(m_l @ m_l)
    k_m = max((model_accuracy - base) / max(1.0 - base, 1e-9), 1e-3)
    k_l = min(kappa / k_m, 1.0)
    return {"label_accuracy": round(k_l + (1 - k_l) * base, 4), "model_accuracy": round(model_accuracy, 4),
            "rows": n, "estimate": "two views: model accuracy from training time"}


def label_accuracy_given_model(labels: np.ndarray, net_probs: np.ndarray, model_accuracy: float,
                               min_rows: int = 50) -> dict[str, float] | None:
    """Two views only (no AU view, e.g. relabel-collection on a collection without aus): the given labels'
    accuracy from their chance-corrected agreement with a network whose accuracy was estimated at training
    time (:func:`view_accuracies` there): k_label = kappa / k_model. On a shifted collection the network is
    weaker than that estimate, which makes this optimistic about the labels, i.e. relabels fewer."""
    return label_accuracy_from_counts(view_counts(labels, net_probs, None), model_accuracy, min_rows)


def rule_accuracies(counts: dict[str, np.ndarray], cfg: RelabelConfig,
                    model_accuracy: float | None = None) -> dict[str, float] | None:
    """The accuracy estimates the bayes rule with trust auto uses: three views when there is an AU view,
    else two with the training-time `model_accuracy`; None otherwise.

    With both (relabel-collection: an AU view and a model whose accuracy was estimated at training time) the
    given labels get the larger of the two estimates (`label_estimate` says which). The three-view estimate
    reads the network and the AU view agreeing as both being right, but both learnt from the same kind of
    labels and share errors, which makes the labels look worse than they are; on a collection whose labels
    are cleaner than the model's training labels the two-view estimate sees it (the network agrees with them
    more often than its training-time accuracy explains). Chosen on train-row collections scored by an
    8,000-row model: news-like photos with right labels 3.8 % -> 1.1 % relabelled, crops unchanged
    (benchmarks/results/label_estimate.md)."""
    if not (cfg.trust == "auto" and cfg.rule == "bayes"):
        return None
    acc = view_accuracies_from_counts(counts)
    two = label_accuracy_from_counts(counts, model_accuracy) if model_accuracy is not None else None
    if acc is None:
        return two
    if cfg.label_estimate == "larger" and two is not None and two["label_accuracy"] > acc["label_accuracy"]:
        return {**acc, "label_accuracy": two["label_accuracy"], "label_estimate": "two views"}
    return acc


def shrink_joint(joint: np.ndarray, lam: float) -> np.ndarray:
    """The joint with its off-diagonal (estimated label noise) scaled by `lam` in [0, 1] and the diagonal
    refilled so that each given label's row keeps its mass: lam 0 = identity noise matrix, 1 = unchanged."""
    lam = float(np.clip(lam, 0.0, 1.0))
    off = joint * (1.0 - np.eye(len(joint))) * lam
    return off + np.diag(joint.sum(axis=1) - off.sum(axis=1))


def bounded_joint(joint: np.ndarray, reference_noise: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """`joint` (J[given i, true j]) with each off-diagonal noise rate P(given i | true j) capped at
    `reference_noise`'s (a noise matrix from :func:`noise_matrix`, e.g. the model's training data's), the
    diagonal refilled so every true class's column keeps its mass: a transition the reference never showed
    gets no noise. Same shape; the true-class marginal is unchanged."""
    nm = noise_matrix(joint)
    ref = np.asarray(reference_noise, dtype=np.float64)
    off = np.minimum(nm, ref) * (1.0 - np.eye(len(nm)))
    capped = off + np.diag(1.0 - off.sum(axis=0))
    return capped * joint.sum(axis=0, keepdims=True)


def au_view_weight_for(cfg: RelabelConfig, accuracies: dict[str, float] | None) -> float:
    """The AU view's weight in :func:`ferclean.au_view.combine` for these verdicts: `au_view_weight`, or
    `au_view_weight_weak` when the label-free estimates (:func:`view_accuracies`) say the network is weaker than
    the labels (by `trust_margin`, as in :func:`decide`) and the AU view stronger than the network; trust
    auto, bayes rule and no audit class_prior only."""
    if (cfg.rule != "bayes" or cfg.trust != "auto" or cfg.class_prior is not None or not accuracies
            or "au_view_accuracy" not in accuracies):
        return cfg.au_view_weight
    model, label, au = (accuracies["model_accuracy"], accuracies["label_accuracy"], accuracies["au_view_accuracy"])
    return cfg.au_view_weight_weak if (network_weaker(cfg, model, label) and au > model) else cfg.au_view_weight


def network_weaker(cfg: RelabelConfig, model_accuracy: float | None, label_accuracy: float | None) -> bool:
    """Whether the network is not estimated stronger than the given labels by `trust_margin` (True without
    estimates): where the trust shrink, the relabel floor and `au_view_weight_weak` apply."""
    return model_accuracy is None or label_accuracy is None or model_accuracy < label_accuracy + cfg.trust_margin


def trust_shrink(joint: np.ndarray, label_accuracy: float | None) -> float:
    """lam of :func:`shrink_joint`: estimated label noise (1 - label_accuracy) over the joint's noise
    (1 - trace), at most 1; 1 when there is no estimate."""
    if label_accuracy is None:
        return 1.0
    noise = 1.0 - float(np.trace(joint))
    return 1.0 if noise <= 1e-9 else float(np.clip((1.0 - label_accuracy) / noise, 0.0, 1.0))


def trust_sums(d: Decision, labels: np.ndarray) -> dict[str, float]:
    """What :func:`trust_summary` needs from some decided rows, as sums that add up over parts."""
    labels = np.asarray(labels)
    rel = (d.action == "relabel") & (labels >= 0)
    out = {"relabels": int(rel.sum()), "labelled": int((labels >= 0).sum()), "right": 0.0, "label_right": 0.0,
           "gain": 0.0, "posterior": int(d.p_right is not None)}
    if d.p_right is not None and rel.any():
        out.update(right=float(d.p_right[rel].sum()), label_right=float(d.p_label_right[rel].sum()),
                   gain=float((d.p_right[rel] - d.p_label_right[rel]).sum()))
    return out


def add_trust_sums(a: dict[str, float] | None, b: dict[str, float]) -> dict[str, float]:
    if a is None:
        return dict(b)
    return {k: min(a[k], b[k]) if k == "posterior" else a[k] + b[k] for k in a}


def trust_from_sums(sums: dict[str, float], shrink: float, accuracies: dict[str, float] | None
                    ) -> dict[str, float | int | str]:
    """:func:`trust_summary` from :func:`trust_sums` (of one part or added over many)."""
    out: dict[str, float | int | str] = {"shrink": round(shrink, 4)}
    out.update(accuracies or {"estimate": "none (no AU view: the joint as estimated)"})
    n = int(sums["relabels"])
    out["relabels"] = n
    if sums["posterior"] and n:
        out["relabel_precision_est"] = round(float(sums["right"]) / n, 4)
        out["replaced_label_right_est"] = round(float(sums["label_right"]) / n, 4)
        out["expected_gain_points"] = round(100 * float(sums["gain"]) / max(int(sums["labelled"]), 1), 2)
    return out


def trust_summary(d: Decision, labels: np.ndarray, accuracies: dict[str, float] | None
                  ) -> dict[str, float | int | str]:
    """What a user needs to judge the relabels: the estimated view accuracies, the shrink and, over the
    relabelled samples, the mean posterior that the new label is right and that the old one was (both
    label-free estimates); expected_gain_points = 100 * sum(p_new - p_old) / labelled samples."""
    return trust_from_sums(trust_sums(d, labels), d.shrink, accuracies)


# -- the rule over a collection in parts -------------------------------------------------------------
# decide() needs, across all rows, only: the calibration temperature, the confident joint (its thresholds
# and counts), the label counts (prior shift), the trust shrink and which labelled rows have the lowest
# posterior of their label (the flagged share). rule_stats() gathers them in passes over the parts (each a
# few numbers, or one histogram); decide_part() then decides any part on its own with them.

FLAG_BINS = 4096

#: one part of a collection for the rule: (labels (n,) class index, -1 = none; probs (n, C)), in collection
#: order; a RuleParts callable gives a fresh pass over all parts each time it is called.
RulePart = tuple[np.ndarray, np.ndarray]
RuleParts = Callable[[], Iterable[RulePart]]


@dataclass(frozen=True)
class RuleStats:
    """The collection statistics of the verdict rule (:func:`rule_stats`)."""

    calibrated: bool
    temperature: float
    labelled: int
    joint: np.ndarray | None = None  # the joint the posterior uses (bounded when asked); None: no labelled row
    prior_divisor: np.ndarray | None = None  # train_prior of the prior shift (given, or the label counts)
    flag_noise: float = 0.0  # 1 - trace of the collection's own joint
    lam: float = 1.0  # trust shrink
    weaker: bool = True  # the network is not estimated stronger than the labels (by trust_margin)
    flag_bin: int = -1  # labelled rows whose posterior support falls in a lower bin are flagged
    flag_ties: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # + these global rows in it
    au_weight: float = 0.5  # the AU view's weight the parts are combined with (:func:`au_view_weight_for`)


def _flag_bin(support: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(np.asarray(support) * FLAG_BINS), 0, FLAG_BINS - 1).astype(np.int64)


def _calibrated(probs: np.ndarray, stats: RuleStats) -> np.ndarray:
    return apply_temperature(probs, stats.temperature) if stats.calibrated else probs


def _posterior(labels: np.ndarray, probs: np.ndarray, stats: RuleStats, cfg: RelabelConfig,
               joint: np.ndarray | None = None) -> np.ndarray:
    c = probs.shape[1]
    j = stats.joint if joint is None else joint
    return bayes_posterior(labels, probs, j if j is not None else np.eye(c) / c, class_prior=cfg.class_prior,
                           train_prior=stats.prior_divisor)


def rule_stats(parts: RuleParts, cfg: RelabelConfig, label_accuracy: float | None = None,
               model_accuracy: float | None = None, reference_noise: np.ndarray | None = None) -> RuleStats:
    """The collection statistics :func:`decide_part` needs, from passes over `parts` (arguments as
    :func:`decide`). Memory: a few (C, C) and (C,) arrays, a histogram of FLAG_BINS counts and the rows
    tied in one bin of it."""
    c, n_lab, lab_counts, nll = 0, 0, None, np.zeros(len(TEMPERATURE_GRID))
    for labels, probs in parts():
        labels = np.asarray(labels, dtype=np.int64)
        lab = labels >= 0
        c = probs.shape[1]
        n_lab += int(lab.sum())
        cnt = np.bincount(labels[lab], minlength=c)
        lab_counts = cnt if lab_counts is None else lab_counts + cnt
        if cfg.calibrate and lab.any():
            nll = nll + temperature_nll_sums(probs[lab], labels[lab])
    calibrated = bool(cfg.calibrate and n_lab >= 50)
    temperature = pick_temperature(nll, n_lab) if calibrated else 1.0
    stats = RuleStats(calibrated, temperature, n_lab)
    if cfg.rule != "bayes":
        return stats

    def labelled_parts():
        for labels, probs in parts():
            labels = np.asarray(labels, dtype=np.int64)
            lab = labels >= 0
            if lab.any():
                yield labels[lab], _calibrated(probs[lab], stats)

    joint = None
    flag_noise = 0.0
    if n_lab:
        sums, counts = np.zeros(c), np.zeros(c)
        for labels, probs in labelled_parts():
            s, k = joint_threshold_sums(labels, probs)
            sums, counts = sums + s, counts + k
        thr = joint_thresholds(sums, counts)
        cj = np.zeros((c, c))
        for labels, probs in labelled_parts():
            cj = cj + joint_counts(labels, probs, thr)
        joint = joint_from_counts(cj, counts)
        flag_noise = 1.0 - float(np.trace(joint))
        if reference_noise is not None and cfg.collection_noise == "bounded":
            joint = bounded_joint(joint, reference_noise)
    if cfg.train_prior is not None:
        divisor = np.asarray(cfg.train_prior, dtype=np.float64)
    elif n_lab:
        divisor = lab_counts.astype(np.float64)
    else:
        divisor = (np.eye(c) / c).sum(axis=0)
    weaker = network_weaker(cfg, model_accuracy, label_accuracy)
    audited = cfg.class_prior is not None
    lam = (trust_shrink(joint, label_accuracy)
           if (cfg.trust == "auto" and joint is not None and weaker and not audited) else 1.0)
    stats = RuleStats(calibrated, temperature, n_lab, joint, divisor, flag_noise, lam, weaker)
    k = round(flag_noise * n_lab) if cfg.bayes_flag_below is None else 0
    if k <= 0:
        return stats

    def supports():  # (support of the given label, global row) of the labelled rows, part by part
        off = 0
        for labels, probs in parts():
            labels = np.asarray(labels, dtype=np.int64)
            lab = np.flatnonzero(labels >= 0)
            if len(lab):
                post = _posterior(labels[lab], _calibrated(probs[lab], stats), stats, cfg)
                yield post[np.arange(len(lab)), labels[lab]], off + lab
            off += len(labels)

    hist = np.zeros(FLAG_BINS, np.int64)
    for sup, _ in supports():
        hist += np.bincount(_flag_bin(sup), minlength=FLAG_BINS)
    cum = np.cumsum(hist)
    b = int(np.searchsorted(cum, k))  # the bin holding the k-th lowest support
    need = k - (int(cum[b - 1]) if b > 0 else 0)
    vals, rows = [], []
    for sup, pos in supports():
        inb = _flag_bin(sup) == b
        vals.append(sup[inb])
        rows.append(pos[inb])
    vals_, rows_ = np.concatenate(vals), np.concatenate(rows)
    ties = np.sort(rows_[np.lexsort((rows_, vals_))[:need]])  # lowest support first, then collection order
    return RuleStats(calibrated, temperature, n_lab, joint, divisor, flag_noise, lam, weaker, b, ties)


def decide(
    labels: np.ndarray,
    probs: np.ndarray,
    alpha: np.ndarray | None,
    sem_dist: np.ndarray | None,
    cfg: RelabelConfig,
    label_accuracy: float | None = None,
    model_accuracy: float | None = None,
    reference_noise: np.ndarray | None = None,
) -> Decision:
    """Vectorised verdicts.

    labels: (N,) int class index, -1 = unlabelled; probs: (N, C); alpha: (N,) or None;
    sem_dist: (N, C) or None; label_accuracy: the label-free estimate of how often the given labels
    are right (:func:`view_accuracies`), which the bayes rule with `trust` auto uses to decide which
    flagged samples it relabels; model_accuracy: the same estimate for the network: when it is at least
    the labels' the joint is used as estimated (a model stronger than the labels may relabel by it; chosen
    on train rows, benchmarks/results/quality_small.md). reference_noise: with `collection_noise` bounded, the
    noise matrix that caps the collection's own (:func:`bounded_joint`; relabel-collection passes the model's
    training data's). Returns a :class:`Decision`. The same as :func:`rule_stats` over this one part, then
    :func:`decide_part` (a large collection: rule_stats over its parts, then decide_part per part).
    """
    labels = np.asarray(labels, dtype=np.int64)
    stats = rule_stats(lambda: [(labels, probs)], cfg, label_accuracy, model_accuracy, reference_noise)
    return decide_part(labels, probs, alpha, sem_dist, cfg, stats)


def decide_part(labels: np.ndarray, probs: np.ndarray, alpha: np.ndarray | None, sem_dist: np.ndarray | None,
                cfg: RelabelConfig, stats: RuleStats, offset: int = 0) -> Decision:
    """:func:`decide` on one part of a collection whose statistics are `stats` (:func:`rule_stats`);
    `offset`: the part's first row in the collection (rows tied for the last flag are taken in collection
    order)."""
    n = probs.shape[0]
    labels = np.asarray(labels, dtype=np.int64)
    labelled = labels >= 0
    temperature = stats.temperature
    probs = _calibrated(probs, stats)
    y = np.where(labelled, labels, 0)
    rows = np.arange(n)
    sugg = probs.argmax(axis=1)
    p_sugg = probs[rows, sugg]
    p_orig = np.where(labelled, probs[rows, y], np.nan)
    margin = p_sugg - p_orig
    has_sem = sem_dist is not None
    if has_sem:
        q = _softmax(-np.asarray(sem_dist, dtype=np.float64) / cfg.semantic_temperature)
        support = (1 - cfg.semantic_weight) * p_orig + cfg.semantic_weight * q[rows, y]
        sem_best = np.asarray(sem_dist).argmin(axis=1)
    else:
        support = p_orig.copy()
        sem_best = sugg
    sem_mis = labelled & has_sem & (sem_best != y)
    low_a = np.zeros(n, bool) if alpha is None else (np.asarray(alpha) < cfg.low_alpha)
    model_sugg = sugg
    lam = 1.0
    joint = stats.joint
    if cfg.rule == "bayes":
        post = _posterior(labels, probs, stats, cfg)
        best = post.argmax(axis=1)
        second = np.argsort(-post, axis=1)[:, 1]
        support = np.where(labelled, post[rows, y], np.nan)
        if cfg.bayes_flag_below is not None:
            low_conf = labelled & (support < cfg.bayes_flag_below)
        else:
            low_conf = np.zeros(n, bool)
            if stats.flag_bin >= 0:
                bins = np.full(n, FLAG_BINS)
                bins[labelled] = _flag_bin(support[labelled])
                tie = (bins == stats.flag_bin) & np.isin(offset + rows, stats.flag_ties)
                low_conf = labelled & ((bins < stats.flag_bin) | tie)
        confident = labelled & (best != y) & (post[rows, best] - support >= cfg.bayes_relabel_margin)
        flagged = low_conf | confident
        weaker = stats.weaker
        # With an audit's class prior the audit is the reference evidence: the label-free caution (shrink,
        # floor) is not applied. On the FER2013 valid split a 100-face audit gave +8.4 points with the plain
        # rule and +0.7 with the floor (benchmarks/results/oof_rules_valid_alone.json).
        audited = cfg.class_prior is not None
        lam = stats.lam
        if lam < 1.0:  # the flags stay; which flagged samples are relabelled follows the shrunk posterior
            post_t = _posterior(labels, probs, stats, cfg, joint=shrink_joint(joint, lam))
            confident = labelled & (best != y) & (post_t[rows, best] - post_t[rows, y] >= cfg.bayes_relabel_margin)
            confident &= post_t[rows, best] > post_t[rows, y]
        else:
            post_t = post
        if not audited and weaker:  # a strong network needs no floor: on the whole FER2013 train split
            # (network stronger than the labels) the floor cost 0.5 points (oof_rules_fer_train.json)
            confident &= probs[rows, best] >= cfg.relabel_floor
        p_right, p_label_right = post_t[rows, best], np.where(labelled, post_t[rows, y], np.nan)
        sugg = np.where(labelled & flagged & (best == y), second, best)
        p_sugg = probs[rows, sugg]
        margin = p_sugg - p_orig
        unl_relabel = post[rows, best] >= cfg.relabel_min_p
    else:
        low_conf = labelled & (support < cfg.flag_below)
        disagree = labelled & (sugg != y) & (margin >= cfg.disagree_margin)
        border = labelled & (support < cfg.flag_below + cfg.borderline) & (sem_mis | low_a)
        flagged = low_conf | disagree | border
        confident = (p_sugg >= cfg.relabel_min_p) & (margin >= cfg.relabel_margin) & (sugg != y)
        if has_sem and cfg.require_semantic_agreement:
            confident &= sem_best == sugg
        unl_relabel = p_sugg >= cfg.relabel_min_p
    action = np.full(n, "keep", dtype=object)
    action[flagged] = "review"
    action[flagged & confident] = "relabel"
    unl = ~labelled
    action[unl] = np.where(unl_relabel[unl], "relabel", "review")
    reasons: list[list[str]] = [[] for _ in range(n)]
    for name, mask in (("low_confidence", low_conf), ("model_disagrees", labelled & (model_sugg != y)),
                       ("semantic_mismatch", sem_mis), ("low_alpha", low_a), ("unlabelled", unl)):
        for i in np.flatnonzero(mask):
            reasons[i].append(name)
    priority = np.where(labelled, 1.0 - support, 1.0 - p_sugg)
    if cfg.rule != "bayes":
        p_right = p_label_right = None
    return Decision(action=action, suggested=sugg, p_original=p_orig, p_suggested=p_sugg, margin=margin,
                    support=support, priority=priority, reasons=reasons, temperature=temperature,
                    p_right=p_right, p_label_right=p_label_right, shrink=lam if cfg.rule == "bayes" else 1.0,
                    joint=joint if cfg.rule == "bayes" else None)

def apply_face_rules(action: np.ndarray, reasons: list[list[str]], has_face: np.ndarray,
                     quality: Sequence[Sequence[str] | None], cfg: RelabelConfig) -> np.ndarray:
    """Add face reasons (no_face, quality flags) and apply no_face/review/drop flag actions."""
    action = action.copy()
    for i in range(len(action)):
        if not has_face[i]:
            reasons[i].append("no_face")
            action[i] = cfg.no_face_action
            continue
        flags = [f for f in (quality[i] or []) if f in QUALITY_FLAGS]
        reasons[i].extend(f for f in flags if f not in reasons[i])
        if any(f in cfg.drop_flags for f in flags):
            action[i] = "drop"
        elif action[i] == "keep" and any(f in cfg.review_flags for f in flags):
            action[i] = "review"
    return action


_SEVERITY = {"keep": 0, "relabel": 1, "review": 2, "drop": 3}


def apply_issue_rules(action: np.ndarray, reasons: list[list[str]], sample_ids: Sequence[str],
                      issues: dict[str, list[str]], cfg: RelabelConfig) -> np.ndarray:
    """Add dataset_issues reasons; escalate the action per `issue_actions` (never de-escalate)."""
    action = action.copy()
    for i, sid in enumerate(sample_ids):
        for reason in issues.get(sid, []):
            if reason not in reasons[i]:
                reasons[i].append(reason)
            target = cfg.issue_actions.get(reason, "keep")
            if _SEVERITY[target] > _SEVERITY[str(action[i])] and target != "keep":
                action[i] = target
    return action

def final_labels(labels: np.ndarray, action: np.ndarray, suggested: np.ndarray) -> np.ndarray:
    """label_final as class index: keep/review -> label, relabel -> suggested, drop -> -1."""
    out = np.where(action == "relabel", suggested, labels).astype(np.int64)
    out[action == "drop"] = -1
    return out

def prior_from_counts(counts: Sequence[float]) -> list[float]:
    """Class shares from per-class counts with add-one-half smoothing (every class stays possible)."""
    c = np.asarray(counts, dtype=np.float64)
    return ((c + 0.5) / (c.sum() + 0.5 * len(c))).tolist()

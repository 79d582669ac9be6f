"""Relabel stage: per-sample verdicts (keep / relabel / review / drop) from out-of-sample predictions.

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

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from ferclean.au_view import AU_VIEW_METHOD, combine
from ferclean.classes import FER7
from ferclean.primary import primary_sample_map

QUALITY_FLAGS: tuple[str, ...] = ("full_frame", "tiny", "blurry", "extreme_pose", "multiple_faces")


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


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibrate_temperature(probs: np.ndarray, labels: np.ndarray,
                          grid: np.ndarray | None = None) -> float:
    """Temperature T minimising the NLL of the given labels under p^(1/T) (renormalised).

    probs: (N, C); labels: (N,) class indices (>= 0). Uses only the given (noisy) labels, never a
    reference, so out-of-fold probabilities of different methods end up on one scale.
    """
    grid = np.exp(np.linspace(np.log(0.2), np.log(5.0), 61)) if grid is None else grid
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    rows = np.arange(len(labels))
    best_t, best = 1.0, np.inf
    for t in grid:
        z = logp / t
        nll = float((np.logaddexp.reduce(z, axis=1) - z[rows, labels]).mean())
        if nll < best:
            best_t, best = float(t), nll
    return best_t


def apply_temperature(probs: np.ndarray, t: float) -> np.ndarray:
    """p^(1/T) renormalised per row (= softmax of the logits divided by T)."""
    z = np.log(np.clip(probs, 1e-12, 1.0)) / t
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Calibrated confident joint J[given i, true j] (sums to 1), as cleanlab's `estimate_joint`.

    labels: (N,) class index >= 0; probs: (N, C) out-of-sample probabilities. Per-class threshold t_j =
    mean p_j over samples labelled j; a sample counts for the true class j with p_j >= t_j (the most
    probable one when several pass); rows are rescaled to the given label counts. No reference labels.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n, c = probs.shape
    counts = np.bincount(labels, minlength=c).astype(np.float64)
    thr = np.array([probs[labels == j, j].mean() if counts[j] else 1.0 for j in range(c)])
    ok = probs >= thr - 1e-6
    any_ok = ok.any(axis=1)
    guess = np.where(ok, probs, -1.0).argmax(axis=1)
    cj = np.zeros((c, c))
    np.add.at(cj, (labels[any_ok], guess[any_ok]), 1.0)
    cj = cj / np.clip(cj.sum(axis=1, keepdims=True), 1e-12, None) * counts[:, None]
    return cj / max(float(cj.sum()), 1e-12)


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
    n, c = probs.shape
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


def decide(
    labels: np.ndarray,
    probs: np.ndarray,
    alpha: np.ndarray | None,
    sem_dist: np.ndarray | None,
    cfg: RelabelConfig,
) -> dict[str, Any]:
    """Vectorised verdicts.

    labels: (N,) int class index, -1 = unlabelled; probs: (N, C); alpha: (N,) or None;
    sem_dist: (N, C) or None. Returns arrays: action (N,) str, suggested (N,) int,
    p_original (N,) float (NaN unlabelled), p_suggested, margin, support, priority, and
    reasons (list of lists).
    """
    n, c = probs.shape
    labels = np.asarray(labels, dtype=np.int64)
    labelled = labels >= 0
    temperature = 1.0
    if cfg.calibrate and labelled.sum() >= 50:
        temperature = calibrate_temperature(probs[labelled], labels[labelled])
        probs = apply_temperature(probs, temperature)
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
    if cfg.rule == "bayes":
        joint = confident_joint(labels[labelled], probs[labelled]) if labelled.any() else None
        post = bayes_posterior(labels, probs, joint, class_prior=cfg.class_prior, train_prior=cfg.train_prior)
        best = post.argmax(axis=1)
        second = np.argsort(-post, axis=1)[:, 1]
        support = np.where(labelled, post[rows, y], np.nan)
        if cfg.bayes_flag_below is not None:
            low_conf = labelled & (support < cfg.bayes_flag_below)
        else:
            low_conf = np.zeros(n, bool)
            k = int(round((1.0 - float(np.trace(joint))) * labelled.sum())) if joint is not None else 0
            if k > 0:
                low_conf[np.flatnonzero(labelled)[np.argsort(support[labelled], kind="stable")[:k]]] = True
        confident = labelled & (best != y) & (post[rows, best] - support >= cfg.bayes_relabel_margin)
        flagged = low_conf | confident
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
    return {"action": action, "suggested": sugg, "p_original": p_orig, "p_suggested": p_sugg,
            "margin": margin, "support": support, "priority": priority, "reasons": reasons,
            "temperature": temperature}


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


def _issue_reasons(store: Any) -> dict[str, list[str]]:
    try:
        from ferclean.dataset_issues.issues import sample_issue_reasons

        return sample_issue_reasons(store) if store.count("dataset_issues") else {}
    except Exception:  # noqa: BLE001  (stage absent or table not built)
        return {}


def final_labels(labels: np.ndarray, action: np.ndarray, suggested: np.ndarray) -> np.ndarray:
    """label_final as class index: keep/review -> label, relabel -> suggested, drop -> -1."""
    out = np.where(action == "relabel", suggested, labels).astype(np.int64)
    out[action == "drop"] = -1
    return out


# -- I/O ------------------------------------------------------------------------------------------

def _load_predictions(store: Any, method: str, fold: str) -> pa.Table:
    preds = store.read("predictions")
    preds = preds.filter(pc.equal(preds["method"], method))
    preds = preds.filter(pc.greater_equal(preds["fold"], 0) if fold == "oof" else pc.equal(preds["fold"], -1))
    return preds


def _face_info(store: Any) -> dict[str, list[str]]:
    """sample_id -> quality flags of the primary face (only samples with a faces row)."""
    if store.count("faces") == 0:
        return {}
    return {sid: list(f or []) for sid, f in primary_sample_map(store, "quality_flags").items()}


def verdict_rows(sample_ids: Sequence[str], label_names: Sequence[str | None], classes: Sequence[str],
                 probs: np.ndarray, alpha: np.ndarray | None, sem_dist: np.ndarray | None,
                 has_face: np.ndarray, quality: Sequence[Sequence[str] | None],
                 cfg: RelabelConfig, run_id: str, method: str,
                 issues: dict[str, list[str]] | None = None, au_probs: np.ndarray | None = None) -> pa.Table:
    """Build contract `relabels` rows for scored samples.

    au_probs: (N, C) AU-view probabilities (NaN rows where a sample has none), combined with `probs`
    by `cfg.au_view_weight`; a labelled sample whose AU view prefers another class gets the reason
    au_view_disagrees (a hint for the reviewer, whatever the weight).
    """
    idx = {c: i for i, c in enumerate(classes)}
    labels = np.array([idx.get(lab, -1) if lab is not None else -1 for lab in label_names], dtype=np.int64)
    d = decide(labels, combine(probs, au_probs, cfg.au_view_weight), alpha, sem_dist, cfg)
    if au_probs is not None:
        known = ~np.isnan(au_probs).any(axis=1)
        for i in np.flatnonzero(known & (labels >= 0) & (np.nan_to_num(au_probs).argmax(axis=1) != labels)):
            d["reasons"][i].append("au_view_disagrees")
    action = apply_face_rules(d["action"], d["reasons"], has_face, quality, cfg)
    if issues:
        action = apply_issue_rules(action, d["reasons"], sample_ids, issues, cfg)
    fin = final_labels(labels, action, d["suggested"])
    rows = np.arange(len(labels))
    now = datetime.now(UTC)
    sem_o = sem_s = None
    if sem_dist is not None:
        sem_o = np.where(labels >= 0, sem_dist[rows, np.maximum(labels, 0)], np.nan)
        sem_s = sem_dist[rows, d["suggested"]]
    nan_to_none = lambda a: [None if (v is None or np.isnan(v)) else float(v) for v in a]  # noqa: E731
    return pa.table({
        "run_id": [run_id] * len(rows),
        "sample_id": list(sample_ids),
        "label_original": list(label_names),
        "label_suggested": [classes[s] for s in d["suggested"]],
        "label_final": [classes[f] if f >= 0 else None for f in fin],
        "action": list(action),
        "alpha": pa.nulls(len(rows), pa.float32()) if alpha is None else [float(a) for a in alpha],
        "p_original": nan_to_none(d["p_original"]),
        "p_suggested": [float(v) for v in d["p_suggested"]],
        "margin": nan_to_none(d["margin"]),
        "sem_dist_original": pa.nulls(len(rows), pa.float32()) if sem_o is None else nan_to_none(sem_o),
        "sem_dist_suggested": pa.nulls(len(rows), pa.float32()) if sem_s is None else [float(v) for v in sem_s],
        "priority": nan_to_none(d["priority"]),
        "method": [method] * len(rows),
        "reasons": d["reasons"],
        "source": ["model"] * len(rows),
        "reviewer": pa.nulls(len(rows), pa.string()),
        "decided_at": [now] * len(rows),
    }) if len(rows) else pa.table({})


def audit_class_prior(store: Any, classes: Sequence[str], min_n: int = 100) -> tuple[list[float] | None, int]:
    """Class shares (in `classes` order) of the latest human decisions on audit rows, or None when
    fewer than `min_n` audited samples have a final label among `classes`. Drops do not count;
    add-one-half smoothing keeps every class possible. Returns (prior, n)."""
    if not store.count("relabels"):
        return None, 0
    t = store.read("relabels", columns=["sample_id", "label_final", "source", "reasons", "decided_at"])
    t = t.filter(pc.equal(t["source"], "human"))
    if not t.num_rows:
        return None, 0
    latest: dict[str, tuple] = {}
    for sid, lab, reasons, when in zip(t["sample_id"].to_pylist(), t["label_final"].to_pylist(),
                                       t["reasons"].to_pylist(), t["decided_at"].to_pylist(), strict=True):
        if "audit" in (reasons or []) and (sid not in latest or when >= latest[sid][1]):
            latest[sid] = (lab, when)
    pos = {c: i for i, c in enumerate(classes)}
    counts = np.zeros(len(classes))
    for lab, _ in latest.values():
        if lab in pos:
            counts[pos[lab]] += 1
    n = int(counts.sum())
    if n < min_n:
        return None, n
    return prior_from_counts(counts), n


def prior_from_counts(counts: Sequence[float]) -> list[float]:
    """Class shares from per-class counts with add-one-half smoothing (every class stays possible)."""
    c = np.asarray(counts, dtype=np.float64)
    return ((c + 0.5) / (c.sum() + 0.5 * len(c))).tolist()


def with_audit_prior(store: Any, config: RelabelConfig, classes: Sequence[str]) -> tuple[RelabelConfig, str]:
    """`config` with the audit class prior filled in when the bayes rule may use one; and where the
    prior comes from ('given', 'audit (n samples)' or 'estimated')."""
    if config.class_prior is not None:
        return config, "given"
    if config.rule == "bayes" and config.audit_prior:
        prior, n_audit = audit_class_prior(store, classes, config.audit_min)
        if prior is not None:
            return config.model_copy(update={"class_prior": prior}), f"audit ({n_audit} samples)"
    return config, "estimated"


def run_relabel(store: Any, run: Any, config: RelabelConfig, progress: bool = True) -> dict[str, Any]:
    """Write one `relabels` row per sample from the stored predictions of `config.method`.

    Samples without predictions (no face, or not trained on) get `no_face_action` with reason
    no_face when they have no faces row, else review with reason not_scored.
    """
    samples = store.read("samples", columns=["sample_id", "label_original"]).to_pydict()
    preds = _load_predictions(store, config.method, config.fold)
    faces = _face_info(store)
    pd_ = preds.to_pydict()
    by_id = {sid: i for i, sid in enumerate(pd_["sample_id"])}
    classes = _class_order(preds)
    config, prior_source = with_audit_prior(store, config, classes)
    scored = [i for i, sid in enumerate(samples["sample_id"]) if sid in by_id]
    unscored = [i for i, sid in enumerate(samples["sample_id"]) if sid not in by_id]
    parts = []
    au_view = "off"
    if scored:
        pi = [by_id[samples["sample_id"][i]] for i in scored]
        probs = np.array([pd_["probs"][j] for j in pi], dtype=np.float64)
        au_probs = None
        if config.method != AU_VIEW_METHOD:
            au_probs = _au_view_probs(store, config.fold, [samples["sample_id"][i] for i in scored], classes)
            au_view = (_au_view_summary(au_probs, config.au_view_weight) if au_probs is not None
                       else "absent (no au_view predictions: train without an aus table?)")
        alpha = None if any(pd_["alpha"][j] is None for j in pi) else np.array([pd_["alpha"][j] for j in pi])
        sem = None if any(pd_["sem_dist"][j] is None for j in pi) else np.array([pd_["sem_dist"][j] for j in pi])
        sids = [samples["sample_id"][i] for i in scored]
        labs = [samples["label_original"][i] for i in scored]
        labs = [lab if lab in classes else None for lab in labs]
        parts.append(verdict_rows(sids, labs, classes, probs, alpha, sem,
                                  np.array([s in faces or not faces for s in sids]),
                                  [faces.get(s) for s in sids], config, run.run_id, config.method,
                                  issues=_issue_reasons(store), au_probs=au_probs))
    if unscored:
        now = datetime.now(UTC)
        rows = []
        for i in unscored:
            sid, lab = samples["sample_id"][i], samples["label_original"][i]
            no_face = sid not in faces
            act = config.no_face_action if no_face else "review"
            rows.append({"run_id": run.run_id, "sample_id": sid, "label_original": lab, "label_suggested": None,
                         "label_final": None if act == "drop" else lab, "action": act, "alpha": None,
                         "p_original": None, "p_suggested": None, "margin": None, "sem_dist_original": None,
                         "sem_dist_suggested": None, "priority": 1.0, "method": config.method,
                         "reasons": (["no_face"] if no_face else ["not_scored"]) + list(faces.get(sid) or []),
                         "source": "model", "reviewer": None, "decided_at": now})
        from ferclean.contracts import load_contract

        parts.append(pa.Table.from_pylist(rows, schema=load_contract("relabels").schema()))
    out = _concat(parts)
    store.append("relabels", out, run.run_id)
    counts = {a: int(v) for a, v in zip(*np.unique(np.array(out["action"].to_pylist(), dtype=object), return_counts=True))} if out.num_rows else {}
    for a, v in counts.items():
        run.counts[f"relabel.{a}"] += v
    return {"rows": out.num_rows, "actions": counts, "method": config.method, "classes": classes,
            "class_prior": prior_source, "au_view": au_view}


def _au_view_summary(au_probs: np.ndarray, weight: float) -> str:
    """How the verdicts used the AU view, for the stage summary."""
    n = int((~np.isnan(au_probs).any(axis=1)).sum())
    return f"weight {weight}, {n} samples" if weight > 0 else "reasons only (au_view_weight 0)"


def _au_view_probs(store: Any, fold: str, sample_ids: Sequence[str], classes: Sequence[str]) -> np.ndarray | None:
    """(N, C) stored AU-view probabilities in `classes` order for `sample_ids` (NaN rows where none), or None."""
    preds = _load_predictions(store, AU_VIEW_METHOD, fold)
    if preds.num_rows == 0:
        return None
    order = _class_order(preds)
    if sorted(order) != sorted(classes):
        return None
    cols = [order.index(c) for c in classes]
    d = preds.select(["sample_id", "probs"]).to_pydict()
    pos = {sid: i for i, sid in enumerate(d["sample_id"])}
    out = np.full((len(sample_ids), len(classes)), np.nan)
    for r, sid in enumerate(sample_ids):
        if sid in pos:
            out[r] = np.asarray(d["probs"][pos[sid]], dtype=np.float64)[cols]
    return out


def _concat(parts: list[pa.Table]) -> pa.Table:
    from ferclean.contracts import load_contract, validate

    contract = load_contract("relabels")
    parts = [validate(p, contract) for p in parts if p.num_rows]
    return pa.concat_tables(parts) if parts else contract.empty()


def _class_order(preds: pa.Table) -> list[str]:
    if "class_order" in preds.column_names and preds.num_rows:
        return str(preds["class_order"][0].as_py()).split(",")
    return list(FER7)


def score_collection(store: Any, run: Any, model_dir: str, config: RelabelConfig,
                     collection: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Apply a saved model to samples (optionally one collection) without training.

    Writes `predictions` rows (method = the model's method, fold = -1; part key
    `score-<collection>`) and one `relabels` row per scored sample with the verdict rule.
    """
    from ferclean.train.model_io import load_model, score
    from ferclean.train.stage import load_inputs, prediction_table

    model = load_model(model_dir)
    classes = model.classes
    inputs = load_inputs(store, classes, splits=None, input_size=int(model.meta["input_size"]),
                         collection=collection, require_label=False)
    if not len(inputs.sample_ids):
        return {"rows": 0}
    probs, alpha, sem, _ = score(model, inputs.images)
    method = model.meta["method"]
    key = f"score-{collection or 'all'}-{method}"
    store.write_part("predictions", key, prediction_table(run.run_id, inputs.sample_ids, method, -1, classes,
                                                          probs, alpha, sem))
    au_probs, au_view = _collection_au_view(store, run, Path(model_dir), inputs, classes, collection)
    if au_probs is not None:
        au_view = _au_view_summary(au_probs, config.au_view_weight)
    faces = _face_info(store)
    config, prior_source = with_audit_prior(store, config, classes)
    if config.train_prior is None and model.meta.get("train_label_prior"):
        config = config.model_copy(update={"train_prior": list(model.meta["train_label_prior"])})
    table = verdict_rows(inputs.sample_ids, inputs.label_names, classes, probs.astype(np.float64), alpha, sem,
                         np.ones(len(inputs.sample_ids), bool), [faces.get(s) for s in inputs.sample_ids],
                         config, run.run_id, method, au_probs=au_probs)
    store.append("relabels", table, run.run_id)
    acts = table["action"].to_pylist()
    for a in set(acts):
        run.counts[f"relabel.{a}"] += acts.count(a)
    return {"rows": table.num_rows, "actions": {a: acts.count(a) for a in set(acts)}, "method": method,
            "class_prior": prior_source, "au_view": au_view}


def _collection_au_view(store: Any, run: Any, model_dir: Path, inputs: Any, classes: Sequence[str],
                        collection: str | None) -> tuple[np.ndarray | None, str]:
    """The model folder's AU view applied to the collection's aus rows (also written to `predictions`),
    or None with the reason it is absent."""
    import json

    from ferclean.au_view import AuView
    from ferclean.train.stage import AU_VIEW_FILE, prediction_table

    path = model_dir / AU_VIEW_FILE
    if not path.exists():
        return None, "absent (the model folder has no au_view.json)"
    spec = json.loads(path.read_text())
    names = list(inputs.intensity_names or [])
    if inputs.au_intensity is None or not set(spec["au_names"]) <= set(names):
        return None, "absent (run the aus stage on the collection first)"
    x = inputs.au_intensity[:, [names.index(n) for n in spec["au_names"]]]
    rows = np.flatnonzero(~np.isnan(x).all(axis=1))
    au_probs = np.full((len(inputs.sample_ids), len(classes)), np.nan)
    au_probs[rows] = AuView.from_dict(spec).predict_proba(x[rows])
    store.write_part("predictions", f"score-{collection or 'all'}-{AU_VIEW_METHOD}", prediction_table(
        run.run_id, [inputs.sample_ids[i] for i in rows], AU_VIEW_METHOD, -1, classes, au_probs[rows], None, None))
    return au_probs, ""

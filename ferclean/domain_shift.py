"""Is a collection unlike the model's training data? Pure statistics for relabel-collection's guard.

At training time the train stage stores a :func:`confidence_profile` of the final method's
cross-fitted (out-of-fold) probabilities in model.json (`confidence_profile`): what the model's
confidence and predicted class mix look like on data like its own. relabel-collection computes the
same profile on the new collection and :func:`shift_report` compares them:

- confidence drop: mean max probability of the new collection below the training data's;
- class-mix gap: total variation distance between the predicted class mix and the given labels'
  mix, beyond the gap the training data had (a model that reads neutral faces as angry predicts a
  class mix that the labels do not have);
- AU-view agreement: share of samples where the network and the AU view pick the same class, below
  the training data's (only when both profiles have it);
- embedding spread: mean squared standardised distance of the network's backbone features from the
  training data's feature means (per-dimension z scores), as a multiple of the training data's own
  (1 = as spread as the training data; label-free, sees image changes that leave the class mix alone);
- label accuracy gain: the given labels' accuracy estimated without reference labels (three views: the labels,
  the network, the AU view; ferclean.noise.view_accuracies) above the model's training labels' (the same
  estimate out of fold at training time): a collection labelled more cleanly than the model's training data,
  where the model's disagreements are more likely its training labels' conventions than label errors.

A collection is shifted when any of them passes its threshold; relabel-collection then sends every
relabel to review with the reason domain_shift and says so in its summary.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _mix(idx: np.ndarray, c: int) -> np.ndarray:
    return np.bincount(idx, minlength=c) / max(len(idx), 1)


def embedding_spread(emb: np.ndarray, mean: list[float], std: list[float]) -> float:
    """Mean over samples and dimensions of ((emb - mean) / std) ** 2."""
    mu, sd = np.asarray(mean, dtype=np.float64), np.clip(np.asarray(std, dtype=np.float64), 1e-6, None)
    return float((((np.asarray(emb, dtype=np.float64) - mu) / sd) ** 2).mean())


def confidence_profile(probs: np.ndarray, labels: np.ndarray | None = None,
                       au_probs: np.ndarray | None = None, embeddings: np.ndarray | None = None,
                       reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Confidence and class-mix statistics of (N, C) probabilities; labels (N,) class index, -1 = none;
    embeddings (N, D) backbone features: with no `reference` their per-dimension mean and std are stored
    (a training profile), with one their spread around the reference's means is measured."""
    probs = np.asarray(probs, dtype=np.float64)
    n, c = probs.shape
    top = probs.max(axis=1) if n else np.zeros(0)
    out: dict[str, Any] = {
        "n": int(n),
        "mean_max_p": round(float(top.mean()), 4) if n else None,
        "median_max_p": round(float(np.median(top)), 4) if n else None,
        "pred_mix": _mix(probs.argmax(axis=1), c).round(4).tolist(),
    }
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        lab = labels >= 0
        if lab.any():
            out["label_mix"] = _mix(labels[lab], c).round(4).tolist()
            out["mix_gap"] = round(mix_gap(probs[lab].argmax(axis=1), labels[lab], c), 4)
    if embeddings is not None and len(embeddings):
        emb = np.asarray(embeddings, dtype=np.float64)
        ref = reference if reference and "emb_mean" in reference else None
        if ref is None:
            out["emb_mean"] = emb.mean(axis=0).round(5).tolist()
            out["emb_std"] = emb.std(axis=0).round(5).tolist()
            ref = out
        out["emb_spread"] = round(embedding_spread(emb, ref["emb_mean"], ref["emb_std"]), 4)
    if au_probs is not None:
        ok = ~np.isnan(au_probs).any(axis=1)
        if ok.any():
            out["au_agreement"] = round(float((au_probs[ok].argmax(axis=1) == probs[ok].argmax(axis=1)).mean()), 4)
    return out


def mix_gap(pred: np.ndarray, labels: np.ndarray, c: int) -> float:
    """Total variation distance between the predicted and the given class mix (0 = same mix, 1 = disjoint)."""
    return 0.5 * float(np.abs(_mix(pred, c) - _mix(labels, c)).sum())


def shift_report(reference: dict[str, Any] | None, current: dict[str, Any], max_confidence_drop: float,
                 max_mix_gap_excess: float, max_au_agreement_drop: float,
                 max_embedding_spread: float = 1.5, max_label_accuracy_gain: float = 0.05) -> dict[str, Any]:
    """Compare a collection's profile with the training data's; `shifted` True when any test fails.
    Without a reference profile (a model saved before profiles existed) only the class-mix gap is tested,
    against zero."""
    ref = reference or {}
    checks: dict[str, Any] = {}
    if ref.get("mean_max_p") is not None and current.get("mean_max_p") is not None:
        drop = ref["mean_max_p"] - current["mean_max_p"]
        checks["confidence_drop"] = {"value": round(drop, 4), "limit": max_confidence_drop,
                                     "failed": bool(drop > max_confidence_drop)}
    if current.get("mix_gap") is not None:
        excess = current["mix_gap"] - float(ref.get("mix_gap", 0.0))
        checks["mix_gap_excess"] = {"value": round(excess, 4), "limit": max_mix_gap_excess,
                                    "failed": bool(excess > max_mix_gap_excess)}
    if ref.get("au_agreement") is not None and current.get("au_agreement") is not None:
        drop = ref["au_agreement"] - current["au_agreement"]
        checks["au_agreement_drop"] = {"value": round(drop, 4), "limit": max_au_agreement_drop,
                                       "failed": bool(drop > max_au_agreement_drop)}
    if ref.get("emb_spread") and current.get("emb_spread") is not None:
        ratio = current["emb_spread"] / ref["emb_spread"]
        checks["embedding_spread"] = {"value": round(ratio, 4), "limit": max_embedding_spread,
                                      "failed": bool(ratio > max_embedding_spread)}
    if ref.get("label_accuracy") is not None and current.get("label_accuracy") is not None:
        gain = current["label_accuracy"] - ref["label_accuracy"]
        checks["label_accuracy_gain"] = {"value": round(gain, 4), "limit": max_label_accuracy_gain,
                                         "failed": bool(gain > max_label_accuracy_gain)}
    failed = [k for k, v in checks.items() if v["failed"]]
    return {"shifted": bool(failed), "failed": failed, "checks": checks,
            "reference": "model.json confidence_profile" if reference else "none (model saved without a profile)"}


# -- the profile of a collection scored in parts ----------------------------------------------------

def embedding_sums(embeddings: np.ndarray, reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """What :func:`profile_from_sums` needs from some rows' embeddings: count, per-dimension sums and sums of
    squares, and (with a `reference` that has emb_mean) the sum of squared z scores around its means."""
    emb = np.asarray(embeddings, dtype=np.float64)
    out: dict[str, Any] = {"n": len(emb), "s1": emb.sum(axis=0).tolist(), "s2": (emb * emb).sum(axis=0).tolist()}
    if reference and "emb_mean" in reference:
        mu = np.asarray(reference["emb_mean"], dtype=np.float64)
        sd = np.clip(np.asarray(reference["emb_std"], dtype=np.float64), 1e-6, None)
        out["z2"] = float((((emb - mu) / sd) ** 2).sum())
    return out


def profile_sums(probs: np.ndarray, labels: np.ndarray, au_probs: np.ndarray | None) -> dict[str, Any]:
    """What :func:`profile_from_sums` needs from some rows' probabilities (per-row max p kept as float32 for
    the median; the rest counts)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    c = probs.shape[1]
    pred = probs.argmax(axis=1)
    lab = labels >= 0
    top = probs.max(axis=1)
    out = {"n": len(probs), "top_sum": float(top.sum()), "top": [top.astype(np.float32)],
           "pred": np.bincount(pred, minlength=c), "lab_pred": np.bincount(pred[lab], minlength=c),
           "lab": np.bincount(labels[lab], minlength=c), "au_n": 0, "au_agree": 0}
    if au_probs is not None:
        ok = ~np.isnan(au_probs).any(axis=1)
        out["au_n"] = int(ok.sum())
        out["au_agree"] = int((au_probs[ok].argmax(axis=1) == pred[ok]).sum())
    return out


def add_sums(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    """Two parts' :func:`profile_sums` or :func:`embedding_sums` together."""
    if a is None:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in b.items()}
    out = {}
    for k, v in a.items():
        if k == "top":
            out[k] = v + b[k]
        elif k in ("s1", "s2"):
            out[k] = (np.asarray(v) + np.asarray(b[k])).tolist()
        else:
            out[k] = v + b[k]
    return out


def profile_from_sums(s: dict[str, Any], emb: dict[str, Any] | None = None,
                      reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`confidence_profile` of a collection from its parts' :func:`profile_sums` (and
    :func:`embedding_sums`, exact over every row) added up; `reference` as there."""
    n = int(s["n"])
    top = np.concatenate(s["top"]).astype(np.float64) if n else np.zeros(0)
    out: dict[str, Any] = {
        "n": n,
        "mean_max_p": round(float(s["top_sum"]) / n, 4) if n else None,
        "median_max_p": round(float(np.median(top)), 4) if n else None,
        "pred_mix": (np.asarray(s["pred"]) / max(n, 1)).round(4).tolist(),
    }
    lab = np.asarray(s["lab"])
    if lab.sum():
        out["label_mix"] = (lab / lab.sum()).round(4).tolist()
        gap = 0.5 * float(np.abs(np.asarray(s["lab_pred"]) / lab.sum() - lab / lab.sum()).sum())
        out["mix_gap"] = round(gap, 4)
    if emb is not None and emb["n"]:
        m, d = int(emb["n"]), len(emb["s1"])
        s1, s2 = np.asarray(emb["s1"]), np.asarray(emb["s2"])
        ref = reference if reference and "emb_mean" in reference else None
        if ref is None or emb.get("z2") is None:
            mean = s1 / m
            out["emb_mean"] = mean.round(5).tolist()
            out["emb_std"] = np.sqrt(np.clip(s2 / m - mean * mean, 0.0, None)).round(5).tolist()
            mu, sd = np.asarray(out["emb_mean"]), np.clip(np.asarray(out["emb_std"]), 1e-6, None)
            z2 = float(((s2 - 2 * mu * s1 + m * mu * mu) / (sd * sd)).sum())
        else:
            z2 = float(emb["z2"])
        out["emb_spread"] = round(z2 / (m * d), 4)
    if s["au_n"]:
        out["au_agreement"] = round(int(s["au_agree"]) / int(s["au_n"]), 4)
    return out

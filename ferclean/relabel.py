"""Relabel stage: per-sample verdicts (keep / relabel / review / drop) from out-of-sample predictions.

The rule itself (its settings :class:`RelabelConfig`, the confident joint, the posterior and the
pure :func:`decide`) lives in :mod:`ferclean.noise`, which the train stage imports too; this module
reads the store (predictions, the AU view's probabilities, the primary faces' quality flags, the
`dataset_issues` reasons, an audit's class prior), applies the rule and writes `relabels`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ferclean.au_view import AU_VIEW_METHOD, combine, mix_views
from ferclean.classes import FER7
from ferclean.dataset_issues.issues import sample_issue_reasons
from ferclean.inference import INFER_BATCH
from ferclean.model_dir import INIT_MODEL_METHOD, ModelDir
from ferclean.noise import (  # noqa: F401  (re-exported: the rule's public names)
    QUALITY_FLAGS,
    Decision,
    RelabelConfig,
    RuleStats,
    add_counts,
    apply_face_rules,
    apply_issue_rules,
    apply_temperature,
    au_view_weight_for,
    bayes_posterior,
    calibrate_temperature,
    confident_joint,
    decide,
    decide_part,
    final_labels,
    label_accuracy_given_model,
    noise_matrix,
    prior_from_counts,
    rule_accuracies,
    rule_stats,
    trust_from_sums,
    trust_summary,
    trust_sums,
    view_accuracies,
    view_accuracies_from_counts,
    view_counts,
)
from ferclean.primary import primary_sample_map


def _issue_reasons(store: Any) -> dict[str, list[str]]:
    """sample_id -> dataset_issues reasons; {} when that stage has not written its table.

    A table that exists but cannot be read fails the stage: dropping the reasons would silently keep
    duplicates and split leaks that `issue_actions` drops.
    """
    if not store.count("dataset_issues"):
        return {}
    return sample_issue_reasons(store)


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
                 issues: dict[str, list[str]] | None = None, au_probs: np.ndarray | None = None,
                 trust: dict[str, Any] | None = None, review_reason: str | None = None,
                 model_accuracy: float | None = None, reference_noise: Any = None) -> pa.Table:
    """Build contract `relabels` rows for scored samples.

    au_probs: (N, C) AU-view probabilities (NaN rows where a sample has none), combined with `probs`
    by `cfg.au_view_weight`; a labelled sample whose AU view prefers another class gets the reason
    au_view_disagrees (a hint for the reviewer, whatever the weight). trust: a dict this fills with
    :func:`ferclean.noise.trust_summary` (how far to trust the relabels). review_reason: when given
    (e.g. domain_shift), every relabel of a labelled sample becomes review with that reason.
    model_accuracy: the scoring model's accuracy estimated at training time; without an AU view the given
    labels' accuracy is then estimated from the two views (:func:`ferclean.noise.label_accuracy_given_model`).
    reference_noise: the scoring model's training-data noise matrix (model.json label_noise) that caps the
    collection's own (`collection_noise` bounded; :func:`ferclean.noise.bounded_joint`).
    """
    v = verdicts(sample_ids, label_names, classes, probs, alpha, sem_dist, has_face, quality, cfg,
                 issues=issues, au_probs=au_probs, trust=trust, review_reason=review_reason,
                 model_accuracy=model_accuracy, reference_noise=reference_noise)
    return v.rows(0, len(v.labels), list(sample_ids), list(label_names), run_id, method)


class Verdicts:
    """The decided verdicts of N scored samples; :meth:`rows` turns any slice of them into `relabels` rows
    (so a large collection is written part by part)."""

    def __init__(self, classes: Sequence[str], labels: np.ndarray, d: Decision, action: np.ndarray,
                 final: np.ndarray, alpha: np.ndarray | None, sem_dist: np.ndarray | None):
        self.classes, self.labels, self.d, self.action, self.final = list(classes), labels, d, action, final
        self.alpha, self.sem_dist = alpha, sem_dist
        self.trust_sums: dict[str, float] | None = None  # ferclean.noise.trust_sums of the rule's own verdicts

    def rows(self, start: int, stop: int, sample_ids: Sequence[str], label_names: Sequence[str | None],
             run_id: str, method: str) -> pa.Table:
        """`relabels` rows of samples start..stop-1 (sample_ids / label_names: those rows' values)."""
        sl = slice(start, stop)
        d, classes = self.d, self.classes
        labels = self.labels[sl]
        n = len(labels)
        if not n:
            return pa.table({})
        now = datetime.now(UTC)
        rows = np.arange(n)
        sugg = d.suggested[sl]
        sem_o = sem_s = None
        if self.sem_dist is not None:
            sem = self.sem_dist[sl]
            sem_o = np.where(labels >= 0, sem[rows, np.maximum(labels, 0)], np.nan)
            sem_s = sem[rows, sugg]
        nan_to_none = lambda a: [None if (v is None or np.isnan(v)) else float(v) for v in a]
        return pa.table({
            "run_id": [run_id] * n,
            "sample_id": list(sample_ids),
            "label_original": list(label_names),
            "label_suggested": [classes[s] for s in sugg],
            "label_final": [classes[f] if f >= 0 else None for f in self.final[sl]],
            "action": list(self.action[sl]),
            "alpha": pa.nulls(n, pa.float32()) if self.alpha is None else [float(a) for a in self.alpha[sl]],
            "p_original": nan_to_none(d.p_original[sl]),
            "p_suggested": [float(v) for v in d.p_suggested[sl]],
            "margin": nan_to_none(d.margin[sl]),
            "sem_dist_original": pa.nulls(n, pa.float32()) if sem_o is None else nan_to_none(sem_o),
            "sem_dist_suggested": pa.nulls(n, pa.float32()) if sem_s is None else [float(v) for v in sem_s],
            "priority": nan_to_none(d.priority[sl]),
            "method": [method] * n,
            "reasons": d.reasons[sl],
            "source": ["model"] * n,
            "reviewer": pa.nulls(n, pa.string()),
            "decided_at": [now] * n,
        })


def verdicts(sample_ids: Sequence[str], label_names: Sequence[str | None], classes: Sequence[str],
             probs: np.ndarray, alpha: np.ndarray | None, sem_dist: np.ndarray | None,
             has_face: np.ndarray, quality: Sequence[Sequence[str] | None], cfg: RelabelConfig,
             issues: dict[str, list[str]] | None = None, au_probs: np.ndarray | None = None,
             trust: dict[str, Any] | None = None, review_reason: str | None = None,
             model_accuracy: float | None = None, labels: np.ndarray | None = None,
             reference_noise: Any = None) -> Verdicts:
    """The verdict rule over N scored samples (arguments as :func:`verdict_rows`; `labels`: the class
    indices of `label_names` when the caller has them, -1 = none). The one-part case of
    :func:`ferclean.noise.rule_stats` + :func:`part_verdicts`."""
    if labels is None:
        labels = label_indices(label_names, classes)
    labels = np.asarray(labels, dtype=np.int64)
    stats, acc = collection_rule_stats(lambda: [(labels, probs, au_probs)], cfg, model_accuracy, reference_noise)
    v = part_verdicts(sample_ids, classes, labels, combine(probs, au_probs, stats.au_weight), au_probs, alpha,
                      sem_dist, has_face, quality, cfg, stats, issues=issues, review_reason=review_reason)
    if trust is not None:
        trust.update(trust_from_sums(v.trust_sums, v.d.shrink, acc))
        if au_probs is not None:
            trust["au_view_weight"] = stats.au_weight
    return v


def label_indices(label_names: Sequence[str | None], classes: Sequence[str]) -> np.ndarray:
    """Class index of each given label (-1: none, or not one of `classes`)."""
    idx = {c: i for i, c in enumerate(classes)}
    return np.array([idx.get(lab, -1) if lab is not None else -1 for lab in label_names], dtype=np.int64)


def collection_rule_stats(parts: Callable[[], Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]]],
                          cfg: RelabelConfig, model_accuracy: float | None = None,
                          reference_noise: Any = None,
                          counts: dict[str, np.ndarray] | None = None) -> tuple[RuleStats, dict[str, Any] | None]:
    """The verdict rule's collection statistics and the trust estimates (:func:`ferclean.noise.rule_accuracies`)
    from passes over a collection's parts: `parts()` gives each part's (labels, the network's probabilities,
    the AU view's or None) in collection order; `counts`: their :func:`ferclean.noise.view_counts` added up when the
    caller has them (one pass fewer). Decide each part with :func:`part_verdicts`."""
    if counts is None:
        for labels, probs, au_probs in parts():
            counts = add_counts(counts, view_counts(labels, probs, au_probs))
    acc = rule_accuracies(counts, cfg, model_accuracy)
    w = au_view_weight_for(cfg, acc)  # the AU view counts more where the network is the weakest view
    stats = rule_stats(lambda: ((lab, combine(p, a, w)) for lab, p, a in parts()), cfg,
                       label_accuracy=acc["label_accuracy"] if acc else None,
                       model_accuracy=acc["model_accuracy"] if acc else None,
                       reference_noise=None if reference_noise is None else np.asarray(reference_noise, dtype=np.float64))
    return dataclasses.replace(stats, au_weight=w), acc


def part_verdicts(sample_ids: Sequence[str], classes: Sequence[str], labels: np.ndarray, combined: np.ndarray,
                  au_probs: np.ndarray | None, alpha: np.ndarray | None, sem_dist: np.ndarray | None,
                  has_face: np.ndarray, quality: Sequence[Sequence[str] | None], cfg: RelabelConfig,
                  stats: RuleStats, offset: int = 0, issues: dict[str, list[str]] | None = None,
                  review_reason: str | None = None) -> Verdicts:
    """The verdicts of one part of a collection (rows offset.. of it) whose rule statistics are `stats`;
    `combined`: the network's probabilities combined with the AU view's (:func:`ferclean.au_view.combine`)."""
    d = decide_part(labels, combined, alpha, sem_dist, cfg, stats, offset)
    sums = trust_sums(d, labels)  # of the rule's own verdicts (before the guard and the face rules)
    if review_reason is not None:
        for i in np.flatnonzero((d.action == "relabel") & (labels >= 0)):
            d.action[i] = "review"
            d.reasons[i].append(review_reason)
    if au_probs is not None:
        known = ~np.isnan(au_probs).any(axis=1)
        for i in np.flatnonzero(known & (labels >= 0) & (np.nan_to_num(au_probs).argmax(axis=1) != labels)):
            d.reasons[i].append("au_view_disagrees")
    action = apply_face_rules(d.action, d.reasons, has_face, quality, cfg)
    if issues:
        action = apply_issue_rules(action, d.reasons, sample_ids, issues, cfg)
    v = Verdicts(classes, labels, d, action, final_labels(labels, action, d.suggested), alpha, sem_dist)
    v.trust_sums = sums
    return v


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
    au_view = init_view = "off"
    trust: dict[str, Any] = {}
    if scored:
        pi = [by_id[samples["sample_id"][i]] for i in scored]
        probs = np.array([pd_["probs"][j] for j in pi], dtype=np.float64)
        au_probs = None
        if config.method != AU_VIEW_METHOD and config.fold == "oof":  # curate --init-model: its own opinion
            init_probs = _view_probs(store, INIT_MODEL_METHOD, "final", [samples["sample_id"][i] for i in scored],
                                     classes)
            if init_probs is not None:
                probs = mix_views(probs, init_probs, config.init_model_weight)
                init_view = f"weight {config.init_model_weight}, {int((~np.isnan(init_probs).any(axis=1)).sum())} samples"
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
                                  issues=_issue_reasons(store), au_probs=au_probs, trust=trust))
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
    record_trust(run, trust)
    return {"rows": out.num_rows, "actions": counts, "method": config.method, "classes": classes,
            "class_prior": prior_source, "au_view": au_view, "init_model": init_view, "trust": trust}


def record_trust(run: Any, trust: dict[str, Any]) -> None:
    """The numeric trust estimates into `runs.counts` as relabel.trust.<key> (for the end-of-run summary)."""
    for k, v in trust.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            run.counts[f"relabel.trust.{k}"] = v


def _au_view_summary(au_probs: np.ndarray, weight: float) -> str:
    """How the verdicts used the AU view, for the stage summary."""
    n = int((~np.isnan(au_probs).any(axis=1)).sum())
    return f"weight {weight}, {n} samples" if weight > 0 else "reasons only (au_view_weight 0)"


def _au_view_probs(store: Any, fold: str, sample_ids: Sequence[str], classes: Sequence[str]) -> np.ndarray | None:
    """(N, C) stored AU-view probabilities in `classes` order for `sample_ids` (NaN rows where none), or None."""
    return _view_probs(store, AU_VIEW_METHOD, fold, sample_ids, classes)


def _view_probs(store: Any, method: str, fold: str, sample_ids: Sequence[str], classes: Sequence[str]
                ) -> np.ndarray | None:
    """(N, C) stored probabilities of `method` in `classes` order for `sample_ids` (NaN rows where none), or None."""
    preds = _load_predictions(store, method, fold)
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


def score_collection(store: Any, run: Any, model_dir: str | Path | ModelDir, config: RelabelConfig,
                     collection: str | None = None, progress: bool = True, *, batch_size: int = 8192,
                     threads: int | None = 1, infer_batch: int = INFER_BATCH) -> dict[str, Any]:
    """Apply a saved model to samples (optionally one collection) without training.

    Writes `predictions` rows (method = the model's method and the AU view's, fold = -1; one part per score
    shard, key `score-<collection>-<shard key>`) and one `relabels` row per scored sample with the verdict rule.

    Scoring runs per shard (:mod:`ferclean.score_shards`: `batch_size` samples a shard, resumable; the flows
    map the shards on their task runner first, so here only the missing ones are scored, in this process).
    The verdicts are then decided from the shards' compact files in passes (:func:`ferclean.noise.rule_stats`
    gathers the collection statistics, :func:`part_verdicts` decides each part and its `relabels` rows are
    appended): what stays in memory for the whole collection is those statistics (a few class-by-class
    arrays, a histogram, the max probability of each row for the domain-shift guard's median: 4 bytes a
    row). The guard's embedding spread is exact over every row.
    threads: torch threads for inference (None = leave torch's setting) and infer_batch (images per forward
    pass): :func:`ferclean.inference.inference_settings`.
    """
    from ferclean.domain_shift import add_sums, profile_from_sums, profile_sums
    from ferclean.noise import add_trust_sums
    from ferclean.score_shards import iter_compact, run_score_shards, score_plan

    model_dir = ModelDir(model_dir).require()
    meta = model_dir.meta()
    classes, method = list(meta["classes"]), meta["method"]
    shards, job = score_plan(store, model_dir.path, collection, batch_size, run.run_id, threads, infer_batch)
    shard_summary = run_score_shards(store, shards, job, collection)
    has_view = model_dir.au_view_path.is_file()
    n, with_au, au_known = 0, has_view, 0
    prof = emb = None
    for info, _ in iter_compact(store, shards, []):
        with_au = with_au and info["au"]
        n += info["rows"]
        emb = add_sums(emb, info["emb"])
    if not n:
        return {"rows": 0, "shards": shard_summary}
    au_absent = None if with_au else ("absent (the model folder has no AU view)" if not has_view
                                       else "absent (run the aus stage on the collection first)")

    def parts(columns: Sequence[str]):
        for info, part in iter_compact(store, shards, columns):
            if not with_au:
                part["au"] = None
            yield info, part

    views = None  # the three views' agreement counts: the labels' accuracy estimate for the guard
    for _, part in parts(["label", "probs", "au"]):
        prof = add_sums(prof, profile_sums(part["probs"], part["label"], part["au"]))
        views = add_counts(views, view_counts(part["label"], part["probs"], part["au"]))
        if part["au"] is not None:
            au_known += int((~np.isnan(part["au"]).any(axis=1)).sum())
    au_view = (f"weight {config.au_view_weight}, {au_known} samples" if config.au_view_weight > 0
               else "reasons only (au_view_weight 0)") if with_au else au_absent
    config, prior_source = with_audit_prior(store, config, classes)
    if config.train_prior is None and meta.get("train_label_prior"):
        config = config.model_copy(update={"train_prior": list(meta["train_label_prior"])})
    shift = shift_from_profile(meta, with_label_accuracy(profile_from_sums(prof, emb, meta.get("confidence_profile")),
                                                         views), config)
    stats, acc = collection_rule_stats(lambda: ((p["label"], p["probs"], p["au"]) for _, p in parts(["label", "probs", "au"])),
                                       config, (meta.get("confidence_profile") or {}).get("model_accuracy"),
                                       meta.get("label_noise"), counts=views)
    weight = stats.au_weight
    review_reason = "domain_shift" if shift["shifted"] and config.domain_shift_guard else None
    actions: dict[str, int] = {}
    sums = None
    offset = 0
    for _, p in parts(["sample_id", "label_original", "label", "probs", "au", "alpha", "sem", "quality"]):
        k = len(p["label"])
        v = part_verdicts(p["sample_id"], classes, p["label"], combine(p["probs"], p["au"], weight), p["au"],
                          p["alpha"], p["sem"], np.ones(k, bool), p["quality"], config, stats, offset,
                          review_reason=review_reason)
        store.append("relabels", v.rows(0, k, p["sample_id"], p["label_original"], run.run_id, method), run.run_id)
        sums = add_trust_sums(sums, v.trust_sums)
        for a, c in zip(*np.unique(v.action.astype(str), return_counts=True), strict=True):
            actions[str(a)] = actions.get(str(a), 0) + int(c)
        offset += k
    actions = dict(sorted(actions.items()))
    for a, k in actions.items():
        run.counts[f"relabel.{a}"] += k
    trust = trust_from_sums(sums, stats.lam if config.rule == "bayes" else 1.0, acc)
    if with_au:
        trust["au_view_weight"] = stats.au_weight
    record_trust(run, trust)
    run.counts["relabel.domain_shift"] = int(shift["shifted"])
    for check in shift["failed"]:  # which checks failed, for the run summary's shift line
        run.counts[f"relabel.domain_shift.{check}"] = 1
    shift["action"] = ("relabels sent to review (reason domain_shift)" if shift["shifted"] and config.domain_shift_guard
                       else "none")
    return {"rows": n, "actions": actions, "method": method,
            "class_prior": prior_source, "au_view": au_view, "trust": trust, "domain_shift": shift,
            "collection_noise": _collection_noise_summary(config, meta), "shards": shard_summary}


def _collection_noise_summary(config: RelabelConfig, meta: dict[str, Any]) -> str:
    """Which noise model relabel-collection's verdicts used, for the stage summary."""
    if config.collection_noise != "bounded":
        return "the collection's own (collection_noise: collection)"
    if meta.get("label_noise") is None:
        return ("the collection's own: the model was saved without label_noise (retrain it, or add it with "
                "benchmarks/shift_collection.py backfill), so relabels are not capped")
    return "the collection's own, capped at the model's training-data noise (model.json label_noise)"


def collection_shift(meta: dict[str, Any], probs: np.ndarray, label_names: Sequence[str | None],
                     classes: Sequence[str], au_probs: np.ndarray | None, config: RelabelConfig,
                     embeddings: np.ndarray | None = None) -> dict[str, Any]:
    """:func:`ferclean.domain_shift.shift_report` of a scored collection against model.json's profile."""
    from ferclean.domain_shift import confidence_profile

    labels = label_indices(label_names, classes)
    current = confidence_profile(probs, labels, au_probs, embeddings, reference=meta.get("confidence_profile"))
    return shift_from_profile(meta, with_label_accuracy(current, view_counts(labels, probs, au_probs)), config)


def with_label_accuracy(profile: dict[str, Any], counts: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """A collection's profile with `label_accuracy`: the given labels' three-view estimate
    (:func:`ferclean.noise.view_accuracies_from_counts`), which the domain-shift guard compares with the model's
    training labels'; unchanged without an AU view or with too few rows."""
    acc = view_accuracies_from_counts(counts) if counts is not None else None
    return {**profile, "label_accuracy": acc["label_accuracy"]} if acc else profile


def shift_from_profile(meta: dict[str, Any], current: dict[str, Any], config: RelabelConfig) -> dict[str, Any]:
    """:func:`ferclean.domain_shift.shift_report` of a collection's profile (e.g. from
    :func:`ferclean.domain_shift.profile_from_sums`) against model.json's."""
    from ferclean.domain_shift import shift_report

    report = shift_report(meta.get("confidence_profile"), current, config.shift_max_confidence_drop,
                          config.shift_max_mix_gap, config.shift_max_au_agreement_drop,
                          config.shift_max_embedding_spread, config.shift_max_label_accuracy_gain)
    current.pop("emb_mean", None)
    current.pop("emb_std", None)
    report["collection"] = current
    return report

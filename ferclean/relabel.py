"""Relabel stage: per-sample verdicts (keep / relabel / review / drop) from out-of-sample predictions.

The rule itself (its settings :class:`RelabelConfig`, the confident joint, the posterior and the
pure :func:`decide`) lives in :mod:`ferclean.noise`, which the train stage imports too; this module
reads the store (predictions, the AU view's probabilities, the primary faces' quality flags, the
`dataset_issues` reasons, an audit's class prior), applies the rule and writes `relabels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ferclean.au_view import AU_VIEW_METHOD, combine
from ferclean.classes import FER7
from ferclean.dataset_issues.issues import sample_issue_reasons
from ferclean.model_dir import INIT_MODEL_METHOD, ModelDir
from ferclean.noise import (  # noqa: F401  (re-exported: the rule's public names)
    QUALITY_FLAGS,
    Decision,
    RelabelConfig,
    apply_face_rules,
    apply_issue_rules,
    apply_temperature,
    bayes_posterior,
    calibrate_temperature,
    confident_joint,
    decide,
    final_labels,
    label_accuracy_given_model,
    mix_views,
    noise_matrix,
    prior_from_counts,
    trust_summary,
    view_accuracies,
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
    idx = {c: i for i, c in enumerate(classes)}
    labels = np.array([idx.get(lab, -1) if lab is not None else -1 for lab in label_names], dtype=np.int64)
    acc = view_accuracies(labels, probs, au_probs) if cfg.trust == "auto" and cfg.rule == "bayes" else None
    if acc is None and model_accuracy is not None and cfg.trust == "auto" and cfg.rule == "bayes":
        acc = label_accuracy_given_model(labels, probs, model_accuracy)
    d = decide(labels, combine(probs, au_probs, cfg.au_view_weight), alpha, sem_dist, cfg,
               label_accuracy=acc["label_accuracy"] if acc else None,
               model_accuracy=acc["model_accuracy"] if acc else None,
               reference_noise=None if reference_noise is None else np.asarray(reference_noise, dtype=np.float64))
    if trust is not None:
        trust.update(trust_summary(d, labels, acc))
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
    fin = final_labels(labels, action, d.suggested)
    rows = np.arange(len(labels))
    now = datetime.now(UTC)
    sem_o = sem_s = None
    if sem_dist is not None:
        sem_o = np.where(labels >= 0, sem_dist[rows, np.maximum(labels, 0)], np.nan)
        sem_s = sem_dist[rows, d.suggested]
    nan_to_none = lambda a: [None if (v is None or np.isnan(v)) else float(v) for v in a]  # noqa: E731
    return pa.table({
        "run_id": [run_id] * len(rows),
        "sample_id": list(sample_ids),
        "label_original": list(label_names),
        "label_suggested": [classes[s] for s in d.suggested],
        "label_final": [classes[f] if f >= 0 else None for f in fin],
        "action": list(action),
        "alpha": pa.nulls(len(rows), pa.float32()) if alpha is None else [float(a) for a in alpha],
        "p_original": nan_to_none(d.p_original),
        "p_suggested": [float(v) for v in d.p_suggested],
        "margin": nan_to_none(d.margin),
        "sem_dist_original": pa.nulls(len(rows), pa.float32()) if sem_o is None else nan_to_none(sem_o),
        "sem_dist_suggested": pa.nulls(len(rows), pa.float32()) if sem_s is None else [float(v) for v in sem_s],
        "priority": nan_to_none(d.priority),
        "method": [method] * len(rows),
        "reasons": d.reasons,
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
                     collection: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Apply a saved model to samples (optionally one collection) without training.

    Writes `predictions` rows (method = the model's method, fold = -1; part key
    `score-<collection>`) and one `relabels` row per scored sample with the verdict rule.
    """
    from ferclean.train.model_io import load_model, score
    from ferclean.train.stage import load_inputs, prediction_table

    model_dir = ModelDir(model_dir).require()
    model = load_model(model_dir)
    classes = model.classes
    inputs = load_inputs(store, classes, splits=None, input_size=int(model.meta["input_size"]),
                         collection=collection, require_label=False)
    if not len(inputs.sample_ids):
        return {"rows": 0}
    probs, alpha, sem, emb = score(model, inputs.images)
    method = model.meta["method"]
    key = f"score-{collection or 'all'}-{method}"
    store.write_part("predictions", key, prediction_table(run.run_id, inputs.sample_ids, method, -1, classes,
                                                          probs, alpha, sem))
    au_probs, au_view = _collection_au_view(store, run, model_dir, inputs, classes, collection)
    if au_probs is not None:
        au_view = _au_view_summary(au_probs, config.au_view_weight)
    faces = _face_info(store)
    config, prior_source = with_audit_prior(store, config, classes)
    if config.train_prior is None and model.meta.get("train_label_prior"):
        config = config.model_copy(update={"train_prior": list(model.meta["train_label_prior"])})
    shift = collection_shift(model.meta, probs, inputs.label_names, classes, au_probs, config, emb)
    trust: dict[str, Any] = {}
    table = verdict_rows(inputs.sample_ids, inputs.label_names, classes, probs.astype(np.float64), alpha, sem,
                         np.ones(len(inputs.sample_ids), bool), [faces.get(s) for s in inputs.sample_ids],
                         config, run.run_id, method, au_probs=au_probs, trust=trust,
                         review_reason="domain_shift" if shift["shifted"] and config.domain_shift_guard else None,
                         model_accuracy=(model.meta.get("confidence_profile") or {}).get("model_accuracy"),
                         reference_noise=model.meta.get("label_noise"))
    store.append("relabels", table, run.run_id)
    acts = table["action"].to_pylist()
    for a in set(acts):
        run.counts[f"relabel.{a}"] += acts.count(a)
    record_trust(run, trust)
    run.counts["relabel.domain_shift"] = int(shift["shifted"])
    shift["action"] = ("relabels sent to review (reason domain_shift)" if shift["shifted"] and config.domain_shift_guard
                       else "none")
    return {"rows": table.num_rows, "actions": {a: acts.count(a) for a in set(acts)}, "method": method,
            "class_prior": prior_source, "au_view": au_view, "trust": trust, "domain_shift": shift}


def collection_shift(meta: dict[str, Any], probs: np.ndarray, label_names: Sequence[str | None],
                     classes: Sequence[str], au_probs: np.ndarray | None, config: RelabelConfig,
                     embeddings: np.ndarray | None = None) -> dict[str, Any]:
    """:func:`ferclean.domain_shift.shift_report` of a scored collection against model.json's profile."""
    from ferclean.domain_shift import confidence_profile, shift_report

    idx = {c: i for i, c in enumerate(classes)}
    labels = np.array([idx.get(lab, -1) if lab is not None else -1 for lab in label_names], dtype=np.int64)
    ref = meta.get("confidence_profile")
    current = confidence_profile(probs, labels, au_probs, embeddings, reference=ref)
    report = shift_report(ref, current, config.shift_max_confidence_drop, config.shift_max_mix_gap,
                          config.shift_max_au_agreement_drop, config.shift_max_embedding_spread)
    current.pop("emb_mean", None)
    current.pop("emb_std", None)
    report["collection"] = current
    return report


def _collection_au_view(store: Any, run: Any, model_dir: ModelDir, inputs: Any, classes: Sequence[str],
                        collection: str | None) -> tuple[np.ndarray | None, str]:
    """The model folder's AU view applied to the collection's aus rows (also written to `predictions`),
    or None with the reason it is absent."""
    from ferclean.train.stage import prediction_table

    saved = model_dir.load_au_view()
    if saved is None:
        return None, "absent (the model folder has no AU view)"
    view, view_names = saved
    names = list(inputs.intensity_names or [])
    if inputs.au_intensity is None or not set(view_names) <= set(names):
        return None, "absent (run the aus stage on the collection first)"
    x = inputs.au_intensity[:, [names.index(n) for n in view_names]]
    rows = np.flatnonzero(~np.isnan(x).all(axis=1))
    au_probs = np.full((len(inputs.sample_ids), len(classes)), np.nan)
    au_probs[rows] = view.predict_proba(x[rows])
    store.write_part("predictions", f"score-{collection or 'all'}-{AU_VIEW_METHOD}", prediction_table(
        run.run_id, [inputs.sample_ids[i] for i in rows], AU_VIEW_METHOD, -1, classes, au_probs[rows], None, None))
    return au_probs, ""

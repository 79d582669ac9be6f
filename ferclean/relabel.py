"""Relabel stage: per-sample verdicts (keep / relabel / review / drop) from out-of-sample predictions.

The rule itself (its settings :class:`RelabelConfig`, the confident joint, the posterior and the
pure :func:`decide`) lives in :mod:`ferclean.noise`, which the train stage imports too; this module
reads the store (predictions, the AU view's probabilities, the primary faces' quality flags, the
`dataset_issues` reasons, an audit's class prior), applies the rule and writes `relabels`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
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
    apply_face_rules,
    apply_issue_rules,
    apply_temperature,
    bayes_posterior,
    calibrate_temperature,
    confident_joint,
    decide,
    decide_parts,
    final_labels,
    label_accuracy_given_model,
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
    indices of `label_names` when the caller has them, -1 = none)."""
    if labels is None:
        idx = {c: i for i, c in enumerate(classes)}
        labels = np.array([idx.get(lab, -1) if lab is not None else -1 for lab in label_names], dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
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
    return Verdicts(classes, labels, d, action, final_labels(labels, action, d.suggested), alpha, sem_dist)


def verdicts_by_part(sample_ids: pa.ChunkedArray | pa.Array, label_names: pa.ChunkedArray | pa.Array,
                     classes: Sequence[str], probs: np.ndarray, alpha: np.ndarray | None, sem_dist: np.ndarray | None,
                     quality: Sequence[Sequence[str] | None], cfg: RelabelConfig, run_id: str, method: str, *,
                     part_size: int = 8192, au_probs: np.ndarray | None = None, trust: dict[str, Any] | None = None,
                     review_reason: str | None = None, model_accuracy: float | None = None,
                     labels: np.ndarray | None = None, reference_noise: Any = None,
                     actions: dict[str, int] | None = None) -> Iterator[pa.Table]:
    """:func:`verdicts` (every sample with a face, no dataset issues) decided and turned into `relabels` rows
    `part_size` samples at a time (:func:`ferclean.noise.decide_parts`): the same rows, but the rule's
    float64 temporaries, reasons and row objects exist for one part only (the whole-collection decision
    added ~0.56 GB at 1 M samples). `probs` may be float32 (cast per part); `trust` and `actions` (verdict
    counts) are filled once every part has been yielded."""
    n = len(probs)
    if labels is None:
        idx = {c: i for i, c in enumerate(classes)}
        labels = np.array([idx.get(lab, -1) if lab is not None else -1 for lab in label_names.to_pylist()],
                          dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    bayes_auto = cfg.trust == "auto" and cfg.rule == "bayes"
    acc = view_accuracies(labels, probs, au_probs) if bayes_auto else None
    if acc is None and model_accuracy is not None and bayes_auto:
        acc = label_accuracy_given_model(labels, probs, model_accuracy)
    bounds = [(s, min(s + part_size, n)) for s in range(0, n, part_size)]

    def parts():
        for s, e in bounds:
            au = None if au_probs is None else au_probs[s:e]
            yield (labels[s:e], combine(np.asarray(probs[s:e], np.float64), au, cfg.au_view_weight),
                   None if alpha is None else alpha[s:e], None if sem_dist is None else sem_dist[s:e])

    rel_n = 0
    rel_right = rel_label_right = 0.0
    shrink = 1.0
    counts: dict[str, int] = {}
    decisions = decide_parts(parts, cfg, label_accuracy=acc["label_accuracy"] if acc else None,
                             model_accuracy=acc["model_accuracy"] if acc else None,
                             reference_noise=None if reference_noise is None else np.asarray(reference_noise, np.float64))
    for (s, e), d in zip(bounds, decisions, strict=True):
        lab = labels[s:e]
        shrink = d.shrink
        rel = (d.action == "relabel") & (lab >= 0)
        rel_n += int(rel.sum())
        if d.p_right is not None:
            rel_right += float(d.p_right[rel].sum())
            rel_label_right += float(d.p_label_right[rel].sum())
        if review_reason is not None:
            for i in np.flatnonzero(rel):
                d.action[i] = "review"
                d.reasons[i].append(review_reason)
        if au_probs is not None:
            au = au_probs[s:e]
            known = ~np.isnan(au).any(axis=1)
            for i in np.flatnonzero(known & (lab >= 0) & (np.nan_to_num(au).argmax(axis=1) != lab)):
                d.reasons[i].append("au_view_disagrees")
        action = apply_face_rules(d.action, d.reasons, np.ones(e - s, bool), [quality[i] for i in range(s, e)], cfg)
        for a in action:
            counts[a] = counts.get(a, 0) + 1
        v = Verdicts(classes, lab, d, action, final_labels(lab, action, d.suggested),
                     None if alpha is None else alpha[s:e], None if sem_dist is None else sem_dist[s:e])
        yield v.rows(0, e - s, sample_ids[s:e].to_pylist(), label_names[s:e].to_pylist(), run_id, method)
    if trust is not None:  # what trust_summary gives on the whole collection (means from the parts' sums)
        out: dict[str, Any] = {"shrink": round(shrink, 4)}
        out.update(acc or {"estimate": "none (no AU view: the joint as estimated)"})
        out["relabels"] = rel_n
        if cfg.rule == "bayes" and rel_n:
            out["relabel_precision_est"] = round(rel_right / rel_n, 4)
            out["replaced_label_right_est"] = round(rel_label_right / rel_n, 4)
            out["expected_gain_points"] = round(100 * (rel_right - rel_label_right) / max(int((labels >= 0).sum()), 1), 2)
        trust.update(out)
    if actions is not None:
        actions.update(counts)


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
                     threads: int | None = 1, infer_batch: int = INFER_BATCH, embedding_sample: int = 20_000) -> dict[str, Any]:
    """Apply a saved model to samples (optionally one collection) without training.

    Writes `predictions` rows (method = the model's method and the AU view's, fold = -1; part keys
    `score-<collection>-<method>-<batch>`) and one `relabels` row per scored sample with the verdict rule.

    Streams: samples, primary faces and AUs are read `batch_size` rows at a time
    (:func:`ferclean.score_inputs.iter_score_batches`), scored and written part by part; what stays in
    memory for the whole collection are the compact per-row numbers the verdict rule needs together
    (probabilities, alpha and semantic distances as float32, AU-view probabilities as float64, the label
    index: about 130 bytes a row) and a uniform sample of `embedding_sample` embeddings for the domain-shift
    guard's spread (exact up to that many rows). threads: torch threads for inference (None = leave
    torch's setting) and infer_batch (images per forward pass): :func:`ferclean.inference.inference_settings`.
    """
    from ferclean.inference import inference_settings
    from ferclean.score_inputs import iter_score_batches
    from ferclean.train.data import decode_crops
    from ferclean.train.model_io import load_model, score
    from ferclean.train.stage import prediction_table

    model_dir = ModelDir(model_dir).require()
    model = load_model(model_dir)
    classes = model.classes
    method = model.meta["method"]
    size = int(model.meta["input_size"])
    saved_view = model_dir.load_au_view()
    view, view_names = saved_view if saved_view is not None else (None, None)
    base = f"score-{collection or 'all'}"
    written: dict[str, list[str]] = {method: [], AU_VIEW_METHOD: []}
    acc = _ScoreAccumulator(embedding_sample)
    au_absent = "absent (the model folder has no AU view)" if view is None else None
    with inference_settings(model, threads):
        for b, batch in enumerate(iter_score_batches(store, collection, view_names, batch_size)):
            probs, alpha, sem, emb = score(model, decode_crops(batch.crops, size), batch_size=infer_batch)
            key = f"{base}-{method}-{b:05d}"
            store.write_part("predictions", key, prediction_table(run.run_id, batch.sample_ids, method, -1, classes,
                                                                  probs, alpha, sem))
            written[method].append(key)
            au_probs = None
            if view is not None and batch.au is not None:
                rows = np.flatnonzero(~np.isnan(batch.au).any(axis=1))
                au_probs = np.full((len(batch.sample_ids), len(classes)), np.nan)
                if len(rows):
                    au_probs[rows] = view.predict_proba(batch.au[rows])
                    key = f"{base}-{AU_VIEW_METHOD}-{b:05d}"
                    store.write_part("predictions", key, prediction_table(
                        run.run_id, [batch.sample_ids[i] for i in rows], AU_VIEW_METHOD, -1, classes, au_probs[rows],
                        None, None))
                    written[AU_VIEW_METHOD].append(key)
            elif view is not None:
                au_absent = "absent (run the aus stage on the collection first)"
            acc.add(batch, classes, probs, alpha, sem, au_probs, emb)
    for m, keys in written.items():
        _remove_stale_parts(store, f"{base}-{m}", keys)
    if not acc.n:
        return {"rows": 0}
    data = acc.finish(au_absent is None and view is not None)
    au_probs = data["au_probs"]
    au_view = _au_view_summary(au_probs, config.au_view_weight) if au_probs is not None else au_absent
    config, prior_source = with_audit_prior(store, config, classes)
    if config.train_prior is None and model.meta.get("train_label_prior"):
        config = config.model_copy(update={"train_prior": list(model.meta["train_label_prior"])})
    probs = data["probs"]
    shift = collection_shift(model.meta, probs, _LabelNames(data["labels"], classes), classes, au_probs, config,
                             data["embedding_sample"])
    trust: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for rows in verdicts_by_part(
            data["sample_ids"], data["label_names"], classes, probs, data["alpha"], data["sem"], data["quality"],
            config, run.run_id, method, part_size=batch_size, au_probs=au_probs, trust=trust,
            review_reason="domain_shift" if shift["shifted"] and config.domain_shift_guard else None,
            model_accuracy=(model.meta.get("confidence_profile") or {}).get("model_accuracy"),
            labels=data["labels"], reference_noise=model.meta.get("label_noise"), actions=counts):
        store.append("relabels", rows, run.run_id)
    actions = {a: counts[a] for a in sorted(counts)}
    for a, k in actions.items():
        run.counts[f"relabel.{a}"] += k
    record_trust(run, trust)
    run.counts["relabel.domain_shift"] = int(shift["shifted"])
    shift["action"] = ("relabels sent to review (reason domain_shift)" if shift["shifted"] and config.domain_shift_guard
                       else "none")
    return {"rows": acc.n, "actions": actions, "method": method,
            "class_prior": prior_source, "au_view": au_view, "trust": trust, "domain_shift": shift,
            "collection_noise": _collection_noise_summary(config, model.meta)}


def _collection_noise_summary(config: RelabelConfig, meta: dict[str, Any]) -> str:
    """Which noise model relabel-collection's verdicts used, for the stage summary."""
    if config.collection_noise != "bounded":
        return "the collection's own (collection_noise: collection)"
    if meta.get("label_noise") is None:
        return ("the collection's own: the model was saved without label_noise (retrain it, or add it with "
                "benchmarks/shift_collection.py backfill), so relabels are not capped")
    return "the collection's own, capped at the model's training-data noise (model.json label_noise)"


class _LabelNames(Sequence):
    """Class names of label indices (None for -1), without materialising a list (for collection_shift)."""

    def __init__(self, labels: np.ndarray, classes: Sequence[str]):
        self.labels, self.classes = labels, list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):  # type: ignore[override]
        lab = int(self.labels[i])
        return self.classes[lab] if lab >= 0 else None


class _ScoreAccumulator:
    """The compact per-row numbers of a streamed score (float32; label index int8), the ids and given labels
    as Arrow arrays, quality flags only where there are some, and a uniform reservoir sample of embeddings."""

    def __init__(self, embedding_sample: int, seed: int = 0):
        self.n = 0
        self.k = embedding_sample
        self.rng = np.random.default_rng(seed)
        self.parts: dict[str, list] = {k: [] for k in ("probs", "alpha", "sem", "au", "labels", "sids", "labs")}
        self.flags: dict[int, list[str]] = {}
        self.emb: np.ndarray | None = None

    def add(self, batch: Any, classes: Sequence[str], probs: np.ndarray, alpha: np.ndarray | None,
            sem: np.ndarray | None, au_probs: np.ndarray | None, emb: np.ndarray) -> None:
        idx = {c: i for i, c in enumerate(classes)}
        p = self.parts
        p["probs"].append(np.asarray(probs, np.float32))
        p["alpha"].append(None if alpha is None else np.asarray(alpha, np.float32))
        p["sem"].append(None if sem is None else np.asarray(sem, np.float32))
        p["au"].append(None if au_probs is None else np.asarray(au_probs, np.float64))
        p["labels"].append(np.array([idx.get(lab, -1) if lab is not None else -1 for lab in batch.label_names], np.int8))
        p["sids"].append(pa.array(batch.sample_ids, pa.string()))
        p["labs"].append(pa.array(batch.label_names, pa.string()))
        for i, f in enumerate(batch.quality):
            if f:
                self.flags[self.n + i] = list(f)
        self._sample_embeddings(np.asarray(emb, np.float32))
        self.n += len(probs)

    def _sample_embeddings(self, emb: np.ndarray) -> None:
        """Reservoir sampling (algorithm R, vectorised per batch): every row seen is kept with chance k / n."""
        if self.emb is None:
            self.emb = np.zeros((0, emb.shape[1]), np.float32)
        room = max(self.k - len(self.emb), 0)
        if room:
            self.emb = np.concatenate([self.emb, emb[:room]])
        rest = emb[room:]
        if len(rest):
            seen = self.n + room + np.arange(len(rest))  # 0-based index of each row in the stream
            slot = (self.rng.random(len(rest)) * (seen + 1)).astype(np.int64)
            keep = slot < self.k
            self.emb[slot[keep]] = rest[keep]  # in stream order: a later row wins a slot, as in algorithm R

    def finish(self, with_au: bool) -> dict[str, Any]:
        p = self.parts
        cat = lambda xs: None if any(x is None for x in xs) else np.concatenate(xs)
        au = None
        if with_au and any(x is not None for x in p["au"]):
            c = p["probs"][0].shape[1]
            au = np.concatenate([x if x is not None else np.full((len(pr), c), np.nan)
                                 for x, pr in zip(p["au"], p["probs"], strict=True)])
        return {"probs": np.concatenate(p["probs"]), "alpha": cat(p["alpha"]), "sem": cat(p["sem"]),
                "au_probs": au, "labels": np.concatenate(p["labels"]).astype(np.int64),
                "sample_ids": pa.chunked_array(p["sids"], pa.string()),
                "label_names": pa.chunked_array(p["labs"], pa.string()),
                "quality": _SparseFlags(self.flags, self.n), "embedding_sample": self.emb}


class _SparseFlags(Sequence):
    """Per-row quality flags stored only for rows that have some ([] elsewhere)."""

    def __init__(self, flags: dict[int, list[str]], n: int):
        self.flags, self.n = flags, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        i = int(i)
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.flags.get(i % self.n, [])


def _remove_stale_parts(store: Any, base: str, keep: Sequence[str]) -> None:
    """Delete `predictions` parts named `base` or `base-<batch>` that this run did not write (an earlier
    score of the same collection with more batches, or the single part of older versions)."""
    pattern = re.compile(re.escape(base) + r"(-\d{5})?")
    for key in store.part_keys("predictions") - set(keep):
        if pattern.fullmatch(key):
            store.part_path("predictions", key).unlink(missing_ok=True)


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

"""The train stage: cross-fitted training of each method, `predictions` rows, the final model.

`crossfit` works on in-memory arrays (benchmarks use it directly); `run_train` reads the store
(samples + primary faces + optional aus/au_graph), cross-fits every configured method, writes
`predictions` parts keyed by method, fold and config hash (an interrupted stage resumes: finished
folds are skipped, an unfinished fold restarts from its last epoch checkpoint), trains the final
model (fold = -1) on the final labels and saves it under `OUT/model/`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.model_selection import StratifiedKFold

from ferclean.au_graph import cooccurrence_graph, load_au_graph, row_normalise
from ferclean.au_view import AU_VIEW_METHOD, AuView, combine, crossfit_au_view, mix_views
from ferclean.aus.stage import REFERENCE_FILE
from ferclean.domain_shift import confidence_profile
from ferclean.model_dir import INIT_MODEL_METHOD, ModelDir
from ferclean.noise import au_view_weight_for, decide, final_labels, noise_matrix, view_accuracies
from ferclean.primary import primary_aus, primary_faces
from ferclean.shards import config_fingerprint
from ferclean.stage_executor import current_executor
from ferclean.train.config import TrainConfig
from ferclean.train.data import OPENFACE_AUS, decode_crops, prototype_aus
from ferclean.train.engine import (
    AUX_METHODS,
    FitResult,
    fit,
    fit_and_score_fold,
    predict,
)
from ferclean.train.model_io import probs_in_classes, save_model


@dataclass
class Inputs:
    """Training inputs aligned by row: ids, label names, (N, S, S) uint8 crops, pseudo AUs."""

    sample_ids: list[str]
    label_names: list[str | None]
    images: np.ndarray
    aus: np.ndarray | None  # (N, M) 0/1 with NaN for unknown, or None when there is no aus table
    au_names: list[str]
    au_intensity: np.ndarray | None = None  # (N, R) AUxx_r with NaN for unknown (the AU view's input)
    intensity_names: list[str] | None = None


def fold_assignment(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(N,) fold index in [0, k), stratified by label, deterministic for a seed."""
    folds = np.zeros(len(labels), dtype=np.int64)
    counts = np.bincount(labels)
    strat = labels if counts[counts > 0].min() >= k else np.zeros_like(labels)
    for f, (_, test) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(labels, strat)):
        folds[test] = f
    return folds


def crossfit(
    images: np.ndarray,
    labels: np.ndarray,
    method: str,
    cfg: TrainConfig,
    aus: np.ndarray | None = None,
    a_bar: np.ndarray | None = None,
    folds: np.ndarray | None = None,
    ckpt_dir: Path | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    on_fold: Callable[[int, np.ndarray, dict[str, Any], FitResult], None] | None = None,
    skip_fold: Callable[[int], bool] | None = None,
) -> dict[str, Any]:
    """Out-of-fold scores: each sample is scored by the model trained on the other folds.

    Returns probs (N, C), alpha (N,) or None, sem_dist (N, C) or None, fold (N,), history.
    `on_fold(k, test_idx, scores, fit_result)` is called after each fold; `skip_fold(k)` True
    skips a fold already finished (its rows stay NaN here).
    """
    folds = fold_assignment(labels, cfg.folds, cfg.seed) if folds is None else folds
    n, c = len(labels), len(cfg.classes)
    probs = np.full((n, c), np.nan, np.float32)
    alpha = np.full(n, np.nan, np.float32)
    sem = np.full((n, c), np.nan, np.float32)
    history: list[dict[str, Any]] = []
    has_alpha = has_sem = False
    todo = [k for k in range(cfg.folds) if skip_fold is None or not skip_fold(k)]

    def job(k: int, base: TrainConfig = cfg) -> tuple:
        tr, te = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        ckpt = None if ckpt_dir is None else Path(ckpt_dir) / f"{method}-fold{k}.pt"
        return (images[tr], labels[tr], images[te], method, base.model_copy(update={"seed": cfg.seed + k}),
                None if aus is None else aus[tr], a_bar, ckpt)

    def finish(k: int, res: FitResult, out: dict[str, Any]) -> None:
        nonlocal has_alpha, has_sem
        te = np.flatnonzero(folds == k)
        probs[te] = out["probs"]
        if out["alpha"] is not None:
            alpha[te], has_alpha = out["alpha"], True
        if out["sem_dist"] is not None:
            sem[te], has_sem = out["sem_dist"], True
        history.extend({**h, "fold": k} for h in res.history)
        if on_fold:
            on_fold(k, te, out, res)
        ckpt = None if ckpt_dir is None else Path(ckpt_dir) / f"{method}-fold{k}.pt"
        if ckpt is not None and ckpt.exists():
            ckpt.unlink()

    external = current_executor()  # the flows' Dask cluster under --task-runner dask (ferclean.stage_executor)
    workers = cfg.resolved_fold_workers(len(todo), len(labels))
    if todo and (external is not None or workers > 1):  # each fold is finished as it ends
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        if external is not None:  # its submit gives the task glibc's usual malloc thresholds on a Dask worker
            pool: Any = nullcontext(external)
            wcfg, runner = cfg, external.description
        else:
            # one torch thread per process when the processes fill the cores (two threads each thrashed)
            wcfg = cfg.model_copy(update={"num_threads": cfg.threads_per_fold_worker(workers)})
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            runner = f"{workers} spawned processes"
        with pool as ex:
            futures = {ex.submit(fit_and_score_fold, *job(k, wcfg)): k for k in todo}
            for fut in as_completed(futures):
                k = futures[fut]
                res, out = fut.result()
                for row in res.history if log else ():
                    log({**row, "fold": k})
                finish(k, res, out)
    else:
        runner = "this process"
        for k in todo:
            res, out = fit_and_score_fold(*job(k), log=(lambda row, k=k: log({**row, "fold": k})) if log else None)
            finish(k, res, out)
    return {"probs": probs, "alpha": alpha if has_alpha else None, "sem_dist": sem if has_sem else None,
            "fold": folds, "history": history, "runner": runner}


def prediction_table(run_id: str, sample_ids: Sequence[str], method: str, fold: int, classes: Sequence[str],
                     probs: np.ndarray, alpha: np.ndarray | None, sem_dist: np.ndarray | None) -> pa.Table:
    """Contract `predictions` rows (+ extra column class_order, the comma-joined class list)."""
    n = len(sample_ids)
    clip = lambda a, hi: np.clip(np.asarray(a, np.float32), 0.0, hi)
    return pa.table({
        "run_id": [run_id] * n,
        "sample_id": list(sample_ids),
        "method": [method] * n,
        "fold": pa.array([fold] * n, pa.int16()),
        "alpha": pa.nulls(n, pa.float32()) if alpha is None else pa.array(clip(alpha, 1.0)),
        "probs": [list(map(float, r)) for r in clip(probs, 1.0)],
        "sem_dist": pa.nulls(n, pa.list_(pa.float32())) if sem_dist is None else [list(map(float, r)) for r in clip(sem_dist, 2.0)],
        "pred_label": [classes[i] for i in np.asarray(probs).argmax(1)],
        "class_order": [",".join(classes)] * n,
    })


def _au_columns(names: Sequence[str], suffix: str = "_c") -> list[str]:
    return sorted(c for c in names if c.startswith("AU") and c.endswith(suffix))


def load_inputs(store: Any, classes: Sequence[str], splits: Sequence[str] | None, input_size: int,
                collection: str | None = None, require_label: bool = True) -> Inputs:
    """Samples with a primary face crop (and label in `classes` when `require_label`)."""
    s = store.read("samples")
    if splits is not None:
        s = s.filter(pc.is_in(s["split"], pa.array(list(splits))))
    if collection is not None and "collection" in s.column_names:
        s = s.filter(pc.equal(s["collection"], collection))
    if require_label:
        s = s.filter(pc.is_in(s["label_original"], pa.array(list(classes))))
    sd = s.select(["sample_id", "label_original"]).to_pydict()
    f = primary_faces(store, ["crop_png"])
    crops = {sid: png for sid, png in zip(f["sample_id"].to_pylist(), f["crop_png"].to_pylist(), strict=True)
             if png is not None}
    keep = [i for i, sid in enumerate(sd["sample_id"]) if sid in crops]
    ids = [sd["sample_id"][i] for i in keep]
    labs = [sd["label_original"][i] for i in keep]
    images = decode_crops([crops[sid] for sid in ids], input_size) if ids else np.zeros((0, input_size, input_size), np.uint8)
    aus, au_names = None, list(OPENFACE_AUS)
    intensity, intensity_names = None, None
    adset = store.dataset("aus")
    if adset is not None:
        au_cols = _au_columns(adset.schema.names)
        r_cols = _au_columns(adset.schema.names, "_r")
        if au_cols or r_cols:
            # the AUs of the same face the crop comes from (ferclean.primary), not face 0
            a = primary_aus(store, au_cols + r_cols).to_pandas().set_index("sample_id").reindex(ids)
            if au_cols:
                aus = a[au_cols].to_numpy(dtype=np.float32)
                au_names = [c[:-2] for c in au_cols]
            r_cols = [c for c in r_cols if a[c].notna().any()]  # a backend may leave some AUs empty
            if r_cols:
                intensity = a[r_cols].to_numpy(dtype=np.float64)
                intensity_names = [c[:-2] for c in r_cols]
    return Inputs(ids, labs, images, aus, au_names, intensity, intensity_names)


def au_graph_for(store: Any, au_names: Sequence[str], presence: np.ndarray) -> tuple[np.ndarray, str]:
    """Row-normalised (M, M) AU graph and where it came from.

    The `au_graph` table's graph when it has every one of `au_names`; eq. 5 on `presence` when the
    table is empty (the au_graph stage did not run) or lacks some of our AUs, and the second value
    says so (it goes into the stage summary). A table that exists but cannot be read raises: the
    stage fails rather than quietly training on another graph.
    """
    if not store.count("au_graph"):
        return cooccurrence_graph(presence), "eq. 5 on the training AUs (no au_graph table)"
    names, a = load_au_graph(store)
    pos = {n: i for i, n in enumerate(names)}
    missing = [n for n in au_names if n not in pos]
    if missing:
        return cooccurrence_graph(presence), f"eq. 5 on the training AUs (au_graph lacks {', '.join(missing)})"
    sel = [pos[n] for n in au_names]
    return np.asarray(row_normalise(np.asarray(a)[np.ix_(sel, sel)]), np.float32), "au_graph table"


def final_training_indices(final: np.ndarray, action: np.ndarray, n_classes: int) -> tuple[np.ndarray, bool]:
    """Rows the final model trains on: samples with a final label whose verdict is not `review`.

    When fewer than max(2 * n_classes, N / 4) such rows remain (a weak cross-fitted model sends
    nearly everything to review, e.g. on a tiny collection), train on every labelled row instead
    of on almost nothing; the second value says whether that fallback was taken.
    """
    confident = np.flatnonzero((final >= 0) & (action != "review"))
    if len(confident) >= max(2 * n_classes, len(final) // 4):
        return confident, False
    return np.flatnonzero(final >= 0), True


def latest_aus_reference(out: Path) -> Path | None:
    """The neutral AU reference the aus stage saved most recently under `OUT/runs/*/`, if any."""
    refs = sorted(Path(out).glob(f"runs/*/{REFERENCE_FILE}"), key=lambda p: p.stat().st_mtime)
    return refs[-1] if refs else None


def init_model_record(config: TrainConfig) -> dict[str, str] | None:
    """{path, fingerprint} of `config.init_model` (checked against the configured backbone / input size /
    width before any training), or None without a warm start."""
    if not config.init_model:
        return None
    from ferclean.train.warm_start import check_compatible, load_init_model

    init = load_init_model(config.init_model)
    check_compatible({**init.meta, "_path": init.path}, config.resolved_backbone(), config.input_size, config.width)
    return {"path": init.path, "fingerprint": init.fingerprint}


def run_train(store: Any, run: Any, config: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Cross-fit each method in `config.methods`, write `predictions`, train + save the final model."""
    classes = list(config.classes)
    inputs = load_inputs(store, classes, config.splits, config.input_size)
    run.counts["train.samples"] = len(inputs.sample_ids)
    if len(inputs.sample_ids) < config.folds * 2:
        raise ValueError(f"only {len(inputs.sample_ids)} samples with a face crop and a label; need more to train")
    labels = np.array([classes.index(lab) for lab in inputs.label_names], dtype=np.int64)
    use_aus = config.pseudo_aus == "aus" or (config.pseudo_aus == "auto" and inputs.aus is not None)
    if config.pseudo_aus == "aus" and inputs.aus is None:
        raise ValueError("pseudo_aus='aus' but the aus table is empty")
    aus = inputs.aus if use_aus else prototype_aus(inputs.label_names, inputs.au_names)
    a_bar, graph_source = (au_graph_for(store, inputs.au_names, aus) if use_aus
                           else (cooccurrence_graph(aus), "eq. 5 on the prototype AUs"))
    run.counts["train.pseudo_aus." + ("aus" if use_aus else "prototype")] += 1
    init = init_model_record(config)
    if init is not None:
        run.config["init_model"] = init
    fp = config_fingerprint({"cfg": config.model_dump(mode="json", exclude={"relabel"}), "ids": inputs.sample_ids,
                             "labels": labels.tolist(), "init": init})[:12]
    ckpt_dir = store.root / "checkpoints" / "train" / fp
    curves: list[dict[str, Any]] = []
    curves_path = Path(run.dir) / "train_curves.json"

    def log(row: dict[str, Any]) -> None:
        curves.append(row)
        curves_path.write_text(json.dumps(curves, indent=1))

    keys: set[str] = set()
    oof: dict[str, dict[str, Any]] = {}
    folds_on = "this process"
    for method in config.methods:
        def key(k: int, method: str = method) -> str:
            return f"train-{method}-f{k}-{fp}"

        def on_fold(k: int, te: np.ndarray, out: dict[str, Any], res: FitResult, method: str = method) -> None:
            store.write_part("predictions", key(k), prediction_table(
                run.run_id, [inputs.sample_ids[i] for i in te], method, k, classes,
                out["probs"], out["alpha"], out["sem_dist"]))
            run.counts[f"train.{method}.relabeled_in_training"] += int((res.labels != labels[np.flatnonzero(
                fold_assignment(labels, config.folds, config.seed) != k)]).sum())

        cf = crossfit(inputs.images, labels, method, config, aus if method in AUX_METHODS else None,
                      a_bar if method in AUX_METHODS else None, ckpt_dir=ckpt_dir if config.checkpoint else None,
                      log=log, on_fold=on_fold, skip_fold=lambda k, key=key: store.has_part("predictions", key(k)))
        folds_on = cf["runner"]
        keys.update(key(k) for k in range(config.folds))
        oof[method] = _read_oof(store, [key(k) for k in range(config.folds)], inputs.sample_ids)
    summary: dict[str, Any] = {"samples": len(inputs.sample_ids), "methods": list(config.methods),
                               "pseudo_aus": "aus" if use_aus else "prototype", "fingerprint": fp,
                               "au_graph": graph_source, "folds_trained_in": folds_on}
    if init is not None:
        summary["init_model"] = init
    au_probs, au_rows = None, np.zeros(len(labels), bool)
    if config.au_view and inputs.au_intensity is not None:
        au_rows = ~np.isnan(inputs.au_intensity).all(axis=1)  # samples with an aus row
        if au_rows.sum() < config.folds * 2:  # too few to cross-fit: no AU view at all
            au_rows[:] = False
        else:
            folds = fold_assignment(labels, config.folds, config.seed)
            au_probs = np.full((len(labels), len(classes)), np.nan)
            au_probs[au_rows] = crossfit_au_view(inputs.au_intensity[au_rows], labels[au_rows], folds[au_rows], len(classes))
            for k in range(config.folds):
                rows = np.flatnonzero(au_rows & (folds == k))
                store.write_part("predictions", f"train-{AU_VIEW_METHOD}-f{k}-{fp}", prediction_table(
                    run.run_id, [inputs.sample_ids[i] for i in rows], AU_VIEW_METHOD, k, classes, au_probs[rows], None, None))
                keys.add(f"train-{AU_VIEW_METHOD}-f{k}-{fp}")
            summary["au_view"] = {"samples": int(au_rows.sum()), "intensities": inputs.intensity_names}
    init_probs = None
    if init is not None:  # the init model's own opinion, a view beside the folds fine-tuned on these labels
        init_probs = probs_in_classes(init["path"], inputs.images, classes)
        fkey = f"train-{INIT_MODEL_METHOD}-{fp}"
        store.write_part("predictions", fkey, prediction_table(run.run_id, inputs.sample_ids, INIT_MODEL_METHOD, -1,
                                                               classes, init_probs, None, None))
        keys.add(fkey)
    if config.final_model:
        method = config.final_method
        scores = oof.get(method) or next(iter(oof.values()))
        rule = config.relabel  # the user's `relabel:` settings, the same object the relabel stage gets
        oof_probs = mix_views(scores["probs"], init_probs, rule.init_model_weight)
        acc = view_accuracies(labels, oof_probs, au_probs) if rule.trust == "auto" else None
        d = decide(labels, combine(oof_probs, au_probs, au_view_weight_for(rule, acc)), scores["alpha"],
                   scores["sem_dist"], rule, label_accuracy=acc["label_accuracy"] if acc else None,
                   model_accuracy=acc["model_accuracy"] if acc else None)
        fin = final_labels(labels, d.action, d.suggested)
        use, fallback = final_training_indices(fin, d.action, len(classes))
        if fallback:
            summary["final_train_fallback"] = "too few confident samples: trained on every labelled sample"
        res = fit(inputs.images[use], fin[use], method, config, aus[use] if method in AUX_METHODS else None,
                  a_bar if method in AUX_METHODS else None,
                  ckpt_path=ckpt_dir / f"{method}-final.pt" if config.checkpoint else None,
                  log=lambda row: log({**row, "fold": -1}))
        model_dir = ModelDir.of_run(store.root)
        save_model(res, config, inputs.au_names, model_dir,
                               extra={"train_run_id": run.run_id, "pseudo_aus": summary["pseudo_aus"],
                                      # the class shares its probabilities carry (relabel's prior shift)
                                      "train_label_prior": (np.bincount(fin[use], minlength=len(classes))
                                                            / max(len(fin[use]), 1)).round(6).tolist(),
                                      "init_model": init,
                                      # P(given i | true j) on its own data, out of fold: relabel-collection
                                      # caps a new collection's noise model with it (noise.bounded_joint)
                                      **({"label_noise": noise_matrix(d.joint).round(5).tolist()}
                                         if d.joint is not None else {})})
        if au_probs is not None:
            fit_rows = np.intersect1d(use, np.flatnonzero(au_rows))
            view = AuView(len(classes)).fit(inputs.au_intensity[fit_rows], fin[fit_rows])
            model_dir.save_au_view(view, list(inputs.intensity_names or []))
            rows = np.flatnonzero(au_rows)
            fkey = f"train-{AU_VIEW_METHOD}-final-{fp}"
            store.write_part("predictions", fkey, prediction_table(
                run.run_id, [inputs.sample_ids[i] for i in rows], AU_VIEW_METHOD, -1, classes,
                view.predict_proba(inputs.au_intensity[rows]), None, None))
            keys.add(fkey)
        ref = latest_aus_reference(store.root)
        if ref is not None:  # a model folder must work on its own for relabel-collection
            model_dir.save_au_reference(ref)
        out = predict(res.model, inputs.images, method, res.templates, res.logit_scale, tta_flip=config.tta_flip,
                      amp=config.resolved_amp())
        # relabel-collection's domain-shift reference: the final model on its own training data, and the
        # label-free estimate of its accuracy (out-of-fold)
        model_dir.write_meta({**model_dir.meta(), "confidence_profile": {
            **confidence_profile(out["probs"], labels, au_probs, out["embeddings"]),
            # the three-view label-free estimates, out of fold: the network's, and the training labels' (the
            # domain-shift guard's reference for a collection labelled more cleanly than these)
            **({"model_accuracy": acc["model_accuracy"], "label_accuracy": acc["label_accuracy"]} if acc else {})}})
        fkey = f"train-{method}-final-{fp}"
        store.write_part("predictions", fkey, prediction_table(run.run_id, inputs.sample_ids, method, -1, classes,
                                                               out["probs"], out["alpha"], out["sem_dist"]))
        keys.add(fkey)
        summary.update({"model_dir": str(model_dir.path), "final_train_samples": len(use),
                        "final_labels_changed": int((fin[use] != labels[use]).sum())})
    stale = {k for k in store.part_keys("predictions") if k.startswith("train-") and k not in keys}
    store.keep_only("predictions", store.part_keys("predictions") - stale)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    run.counts["train.prediction_rows"] = store.count("predictions")
    summary["curves"] = str(curves_path)
    return summary


def _read_oof(store: Any, keys: Sequence[str], sample_ids: Sequence[str]) -> dict[str, Any]:
    """Re-read a method's fold parts (also those finished by an earlier, interrupted run)."""
    tables = [pq.read_table(store.part_path("predictions", k)) for k in keys]
    t = pa.concat_tables(tables, promote_options="default").to_pydict()
    pos = {sid: i for i, sid in enumerate(t["sample_id"])}
    order = [pos[s] for s in sample_ids]
    probs = np.array([t["probs"][i] for i in order], np.float64)
    alpha = None if t["alpha"][order[0]] is None else np.array([t["alpha"][i] for i in order], np.float64)
    sem = None if t["sem_dist"][order[0]] is None else np.array([t["sem_dist"][i] for i in order], np.float64)
    return {"probs": probs, "alpha": alpha, "sem_dist": sem}

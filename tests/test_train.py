"""Training engine, cross-fitting, the train stage and the saved-model API on tiny synthetic data."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ferclean.runs import open_run
from ferclean.store import Store
from ferclean.train import TrainConfig, crossfit, load_model, run_train, score
from ferclean.train.data import cooccurrence_graph, prototype_aus
from ferclean.train.engine import fit, predict

CLASSES = ["neutral", "happy", "sad"]


def toy_images(n: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class k = a bright band in horizontal third k, plus noise: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    imgs = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    t = size // 3
    for i, k in enumerate(y):
        imgs[i, k * t : (k + 1) * t, :] += 150
    return imgs, y.astype(np.int64)


def tiny_cfg(**kw) -> TrainConfig:
    base = {"classes": CLASSES, "input_size": 16, "width": 4, "epochs": 3, "batch_size": 16, "lr": 0.01, "folds": 2,
                "backbone": "cnn", "device": "cpu", "au_dim": 4, "gcn_channels": 8, "tta_flip": False}
    base.update(kw)
    return TrainConfig(**base)


def toy_aus(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    aus = prototype_aus([CLASSES[k] for k in y])
    return aus, cooccurrence_graph(aus)


def test_ce_learns_toy_task():
    x, y = toy_images(72)
    res = fit(x, y, "ce", tiny_cfg(epochs=4, checkpoint=False, lr_milestones=(1.0, 1.0)))
    out = predict(res.model, x, "ce", tta_flip=False)
    assert (out["probs"].argmax(1) == y).mean() > 0.8
    assert np.allclose(out["probs"].sum(1), 1, atol=1e-5)
    assert out["alpha"] is None and out["sem_dist"] is None


@pytest.mark.parametrize("method", ["scn", "ulcag", "ulcag_target", "ulcag_aux"])
def test_methods_train_and_score(method):
    x, y = toy_images(64)
    aus, a = toy_aus(y)
    res = fit(x, y, method, tiny_cfg(checkpoint=False, aux_warmup=0.0), aus, a)
    out = predict(res.model, x, method, res.templates, res.logit_scale, tta_flip=True)
    assert out["probs"].shape == (64, 3) and np.isfinite(out["probs"]).all()
    assert out["embeddings"].shape == (64, 32)
    if method in ("scn", "ulcag", "ulcag_target"):
        assert ((out["alpha"] > 0) & (out["alpha"] < 1)).all()
    if method in ("ulcag", "ulcag_aux"):
        assert out["sem_dist"].shape == (64, 3)
        assert ((out["sem_dist"] >= 0) & (out["sem_dist"] <= 2)).all()
        assert res.templates is not None and res.templates.abs().sum() > 0
    assert [h["epoch"] for h in res.history] == [0, 1, 2]


def test_bf16_autocast_on_cpu_trains_and_scores_like_float32():
    # the autocast path CUDA takes by default, exercised on the CPU (amp="bf16")
    from ferclean.hardware import cpu_has_native_bf16

    assert tiny_cfg(amp="off").resolved_amp() is False and tiny_cfg(amp="bf16").resolved_amp() is True
    assert tiny_cfg(device="cpu").resolved_amp() is cpu_has_native_bf16()  # auto on a CPU
    x, y = toy_images(64)
    aus, a = toy_aus(y)
    res = fit(x, y, "ulcag", tiny_cfg(amp="bf16", checkpoint=False), aus, a)
    assert all(np.isfinite(h["loss"]) for h in res.history)
    half = predict(res.model, x, "ulcag", res.templates, res.logit_scale, amp=True)
    full = predict(res.model, x, "ulcag", res.templates, res.logit_scale, amp=False)
    assert half["probs"].dtype == full["probs"].dtype and np.isfinite(half["probs"]).all()
    assert np.abs(half["probs"] - full["probs"]).max() < 0.1  # bf16 keeps ~3 significant digits
    assert (half["probs"].argmax(1) == full["probs"].argmax(1)).mean() > 0.9


def test_aux_methods_need_aus():
    x, y = toy_images(16)
    with pytest.raises(ValueError, match="pseudo AUs"):
        fit(x, y, "ulcag", tiny_cfg(checkpoint=False))


def test_interrupted_fit_resumes_from_checkpoint(tmp_path):
    x, y = toy_images(48)
    aus, a = toy_aus(y)
    ckpt = tmp_path / "c.pt"
    seen: list[int] = []

    def crash(row):
        seen.append(row["epoch"])
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(x, y, "ulcag", tiny_cfg(epochs=4), aus, a, ckpt_path=ckpt, log=crash)
    assert ckpt.exists()
    again: list[int] = []
    res = fit(x, y, "ulcag", tiny_cfg(epochs=4), aus, a, ckpt_path=ckpt, log=lambda r: again.append(r["epoch"]))
    assert seen == [0, 1] and again == [2, 3]
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]


def test_fit_is_seeded():
    x, y = toy_images(32)
    a = predict(fit(x, y, "ce", tiny_cfg(epochs=1, checkpoint=False)).model, x, "ce", tta_flip=False)["probs"]
    b = predict(fit(x, y, "ce", tiny_cfg(epochs=1, checkpoint=False)).model, x, "ce", tta_flip=False)["probs"]
    assert np.allclose(a, b, atol=1e-5)


def test_crossfit_scores_every_sample_out_of_fold():
    x, y = toy_images(60)
    calls = []
    out = crossfit(x, y, "ce", tiny_cfg(folds=3, epochs=1, checkpoint=False),
                   on_fold=lambda k, te, o, r: calls.append((k, set(te.tolist()), len(r.labels))))
    assert sorted(k for k, *_ in calls) == [0, 1, 2]
    held = [s for _, s, _ in calls]
    assert set().union(*held) == set(range(60)) and sum(len(s) for s in held) == 60
    assert all(n_train == 60 - len(s) for (_, s, n_train) in calls)  # trained without its held-out fold
    assert np.isfinite(out["probs"]).all()
    assert np.bincount(out["fold"]).tolist() == [20, 20, 20]


# -- stage ----------------------------------------------------------------------------------------

def make_store(tmp_path, n: int = 36, no_face: int = 1) -> tuple[Store, list[str]]:
    """samples (via the contract) + a minimal faces part (sample_id, face_index, is_primary, crop_png, quality_flags)."""
    store = Store(tmp_path / "out")
    x, y = toy_images(n)
    ids = [f"s{i:03d}" for i in range(n)]
    samples = pa.table({
        "sample_id": ids, "source_path": [f"/x/{i}.png" for i in ids], "content_sha256": ["0" * 64] * n,
        "split": ["train"] * n, "label_original": [CLASSES[k] for k in y], "label_raw": [CLASSES[k] for k in y],
        "collection": ["toy"] * n, "width": [16] * n, "height": [16] * n, "channels": [1] * n,
        "source_row": list(range(n)), "run_id": ["r0"] * n,
    })
    store.write_part("samples", "all", samples)
    keep = ids[: n - no_face]
    faces = pa.table({
        "sample_id": keep, "face_index": pa.array([0] * len(keep), pa.int16()), "is_primary": [True] * len(keep),
        "crop_png": [cv2.imencode(".png", x[i])[1].tobytes() for i in range(len(keep))],
        "quality_flags": [["blurry"] if i == 0 else [] for i in range(len(keep))],
        "run_id": ["r0"] * len(keep),
    })
    d = store.table_dir("faces")
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(faces, d / "part-all.parquet")
    return store, ids


def test_run_train_writes_predictions_model_and_curves(tmp_path):
    store, _ids = make_store(tmp_path)
    cfg = tiny_cfg(methods=["ce", "ulcag"], final_method="ulcag", epochs=2, aux_warmup=0.0)
    with open_run(store, "train", cfg.model_dump(mode="json")) as run:
        summary = run_train(store, run, cfg, progress=False)
        curves = json.loads((run.dir / "train_curves.json").read_text())
    assert summary["samples"] == 35 and summary["pseudo_aus"] == "prototype"
    preds = store.read("predictions").to_pandas()
    oof = preds[preds.fold >= 0]
    assert len(oof) == 2 * 35 and oof.groupby(["method", "sample_id"]).size().max() == 1
    assert set(oof.fold) == {0, 1}
    assert oof[oof.method == "ce"].alpha.isna().all() and oof[oof.method == "ulcag"].alpha.notna().all()
    assert oof[oof.method == "ulcag"].sem_dist.map(len).eq(3).all()
    assert (preds.fold == -1).sum() == 35
    assert {c["method"] for c in curves} == {"ce", "ulcag"} and {-1, 0, 1} <= {c["fold"] for c in curves}
    model = load_model(store.root / "model")
    meta = json.loads((store.root / "model" / "model.json").read_text())
    assert meta["classes"] == CLASSES and meta["input_size"] == 16 and meta["au_names"]
    # the class mix the final model was trained on (relabel-collection's prior shift divides by it)
    assert len(meta["train_label_prior"]) == 3 and sum(meta["train_label_prior"]) == pytest.approx(1.0, abs=1e-5)
    crops = [cv2.imencode(".png", im)[1].tobytes() for im in toy_images(5)[0]]
    probs, alpha, sem, emb = score(model, crops)
    assert probs.shape == (5, 3) and alpha.shape == (5,) and sem.shape == (5, 3) and emb.shape[0] == 5
    # a second run with the same config reuses the finished folds (resume) and keeps one set of parts
    with open_run(store, "train", cfg.model_dump(mode="json")) as run:
        run_train(store, run, cfg.model_copy(update={"final_model": False}), progress=False)
    assert len(store.read("predictions").to_pandas().query("fold >= 0")) == 2 * 35


def test_model_folder_carries_the_aus_reference(tmp_path):
    store, _ = make_store(tmp_path)
    older = store.run_dir("r1") / "aus_reference.json"
    older.write_text('{"which": "old"}')
    newer = store.run_dir("r2") / "aus_reference.json"
    newer.write_text('{"which": "new"}')
    os.utime(older, (1, 1))  # make r1's file the older one whatever the clock resolution
    cfg = tiny_cfg(methods=["ce"], final_method="ce", epochs=1)
    with open_run(store, "train", cfg.model_dump(mode="json")) as run:
        run_train(store, run, cfg, progress=False)
    assert json.loads((store.root / "model" / "aus_reference.json").read_text()) == {"which": "new"}


def test_final_training_indices_fall_back_when_almost_everything_is_review():
    from ferclean.train.stage import final_training_indices

    final = np.array([0, 1, 2, 1, -1, 0, 2, 1])
    action = np.array(["keep", "relabel", "keep", "keep", "drop", "review", "keep", "keep"])
    idx, fallback = final_training_indices(final, action, n_classes=2)
    assert not fallback and idx.tolist() == [0, 1, 2, 3, 6, 7]
    idx, fallback = final_training_indices(final, np.array(["review"] * 4 + ["drop"] + ["review"] * 3), n_classes=2)
    assert fallback and idx.tolist() == [0, 1, 2, 3, 5, 6, 7]  # every labelled row, drops still out


def write_toy_aus(store: Store, ids: list[str], y: np.ndarray) -> None:
    """An aus part whose two intensities tell classes 1 and 2 apart (AU04 empty: an empty AU is ignored)."""
    rng = np.random.default_rng(0)
    inten = rng.normal(0.2, 0.2, (len(ids), 2)).clip(0)
    inten[y == 1, 0] += 2.0
    inten[y == 2, 1] += 2.0
    aus = pa.table({"sample_id": ids, "face_index": pa.array([0] * len(ids), pa.int16()),
                    "AU01_r": inten[:, 0], "AU02_r": inten[:, 1], "AU04_r": [None] * len(ids),
                    "AU01_c": (inten[:, 0] > 1).astype(np.float32), "AU02_c": (inten[:, 1] > 1).astype(np.float32)})
    d = store.table_dir("aus")
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(aus, d / "part-all.parquet")


def test_au_view_is_crossfitted_saved_and_used_by_the_verdicts(tmp_path):
    from ferclean.relabel import RelabelConfig, run_relabel, score_collection

    store, ids = make_store(tmp_path)
    y = toy_images(len(ids))[1]
    write_toy_aus(store, ids, y)
    cfg = tiny_cfg(methods=["ce"], final_method="ce", epochs=1)
    with open_run(store, "train", cfg.model_dump(mode="json")) as run:
        summary = run_train(store, run, cfg, progress=False)
    assert summary["au_view"] == {"samples": 35, "intensities": ["AU01", "AU02"]}
    preds = store.read("predictions").to_pandas()
    view = preds[preds.method == "au_view"]
    assert len(view[view.fold >= 0]) == 35 and len(view[view.fold == -1]) == 35
    assert view.alpha.isna().all()
    # the AU view separates the toy classes out of fold: its argmax is mostly the class
    oof = view[view.fold >= 0].set_index("sample_id").loc[ids[:35]]
    assert (np.stack(oof.probs.to_numpy()).argmax(1) == y[:35]).mean() > 0.8
    spec = json.loads((store.root / "model" / "au_view.json").read_text())
    assert spec["au_names"] == ["AU01", "AU02"] and np.array(spec["coef"]).shape == (3, 4)
    with open_run(store, "relabel", {}) as run:
        used = run_relabel(store, run, RelabelConfig(method="ce"), progress=False)
        off = run_relabel(store, run, RelabelConfig(method="ce", au_view_weight=0.0), progress=False)
        coll = score_collection(store, run, str(store.root / "model"), RelabelConfig(), collection="toy")
    assert used["au_view"].startswith("weight 0.5, 35 samples") and off["au_view"] == "reasons only (au_view_weight 0)"
    assert coll["au_view"] == "weight 0.5, 35 samples" and coll["rows"] == 35


def test_the_model_keeps_its_training_labels_accuracy_estimate_for_the_shift_guard(tmp_path):
    """model.json's confidence_profile holds the out-of-fold three-view estimates of the network and of the
    training labels: relabel-collection's guard compares a new collection's labels with the latter (issue 17)."""
    from ferclean.au_view import AU_VIEW_METHOD
    from ferclean.noise import view_accuracies

    store, ids = make_store(tmp_path, n=90, no_face=0)
    y = toy_images(len(ids))[1]
    write_toy_aus(store, ids, y)
    cfg = tiny_cfg(methods=["ce"], final_method="ce", epochs=1)
    with open_run(store, "train", cfg.model_dump(mode="json")) as run:
        run_train(store, run, cfg, progress=False)
    profile = json.loads((store.root / "model" / "model.json").read_text())["confidence_profile"]
    preds = store.read("predictions").to_pandas()
    oof = {m: preds[(preds.method == m) & (preds.fold >= 0)].set_index("sample_id").loc[ids]
           for m in ("ce", AU_VIEW_METHOD)}
    est = view_accuracies(y, np.stack(oof["ce"].probs.to_numpy()), np.stack(oof[AU_VIEW_METHOD].probs.to_numpy()))
    assert profile["label_accuracy"] == pytest.approx(est["label_accuracy"], abs=1e-3)
    assert profile["model_accuracy"] == pytest.approx(est["model_accuracy"], abs=1e-3)
    # scored as a new collection: labels like the training labels pass; against a model whose training labels
    # were estimated far worse, the same labels look cleaner and the relabels go to review, saying why
    from ferclean.model_dir import ModelDir
    from ferclean.relabel import RelabelConfig, score_collection

    md = ModelDir.of_run(store.root)
    flipped = store.read("samples").to_pydict()
    for i in range(0, 90, 5):  # 18 wrong labels (6 a class: the class mix stays), for the model to relabel
        flipped["label_original"][i] = CLASSES[(CLASSES.index(flipped["label_original"][i]) + 1) % 3]
    store.write_part("samples", "all", pa.table(flipped))
    cfg_r = RelabelConfig(trust="off", relabel_floor=0.0, collection_noise="collection")
    with open_run(store, "relabel-collection", {}) as run:
        same = score_collection(store, run, md, cfg_r)
    assert "label_accuracy_gain" not in same["domain_shift"]["failed"] and same["actions"].get("relabel", 0) > 0
    md.write_meta({**md.meta(), "confidence_profile": {**profile, "label_accuracy": 0.2}})
    with open_run(store, "relabel-collection", {}) as run:
        cleaner = score_collection(store, run, md, cfg_r)
        run_id = run.run_id
    assert "label_accuracy_gain" in cleaner["domain_shift"]["failed"] and "relabel" not in cleaner["actions"]
    assert cleaner["actions"]["review"] >= same["actions"].get("review", 0) + same["actions"]["relabel"]
    counts = json.loads(store.read("runs").to_pandas().set_index("run_id").loc[run_id, "counts"])
    assert counts["relabel.domain_shift.label_accuracy_gain"] == 1


def test_the_users_relabel_settings_decide_the_final_models_training_labels(tmp_path):
    """Regression (issue 15): train built its own default RelabelConfig, so the `relabel:` section of
    the user's config file never reached the labels the final model trains on."""
    from ferclean import pipeline

    store, ids = make_store(tmp_path, no_face=0)
    flipped = store.read("samples").to_pydict()
    for i in range(0, 36, 4):  # 9 wrong labels for the rule to find
        flipped["label_original"][i] = CLASSES[(CLASSES.index(flipped["label_original"][i]) + 1) % 3]
    store.write_part("samples", "all", pa.table(flipped))
    train = {"classes": CLASSES, "input_size": 16, "width": 4, "epochs": 2, "batch_size": 16, "lr": 0.01,
             "folds": 2, "backbone": "cnn", "device": "cpu", "au_dim": 4, "gcn_channels": 8, "tta_flip": False,
             "methods": ["ce"], "final_method": "ce"}
    keep_all = {"rule": "threshold", "calibrate": False, "flag_below": 0.0, "disagree_margin": 1.0}
    to_argmax = {"rule": "threshold", "calibrate": False, "flag_below": 1.0, "disagree_margin": 0.0,
                 "relabel_min_p": 0.0, "relabel_margin": 0.0, "require_semantic_agreement": False}
    plan = [pipeline.get_spec("train"), pipeline.get_spec("relabel")]
    summaries = {}
    for name, rule in (("keep_all", keep_all), ("to_argmax", to_argmax)):
        configs = pipeline.build_configs(plan, {"train": train, "relabel": rule})
        assert configs["train"].relabel is configs["relabel"]  # one object reaches both stages
        with open_run(store, "train", {}) as run:
            summaries[name] = run_train(store, run, configs["train"], progress=False)
    preds = store.read("predictions").to_pandas().query("method == 'ce' and fold >= 0").set_index("sample_id")
    labels = {s: CLASSES.index(lab) for s, lab in zip(flipped["sample_id"], flipped["label_original"], strict=True)}
    disagree = sum(int(np.argmax(preds.loc[s, "probs"]) != labels[s]) for s in ids)
    assert disagree > 0
    assert summaries["keep_all"]["final_labels_changed"] == 0 and summaries["keep_all"]["final_train_samples"] == 36
    assert summaries["to_argmax"]["final_labels_changed"] == disagree  # every disagreement relabeled to the argmax
    with pytest.raises(ValueError, match="relabel: section"):
        pipeline.build_configs(plan, {"train": {**train, "relabel": keep_all}})


def test_au_graph_for_says_where_the_graph_came_from_and_fails_on_a_broken_table(tmp_path):
    from ferclean.au_graph import cooccurrence, graph_table
    from ferclean.train.stage import au_graph_for

    store = Store(tmp_path / "out")
    presence = np.array([[1, 0], [1, 1], [0, 0]], np.float32)
    a, source = au_graph_for(store, ["AU01", "AU02"], presence)
    assert source.endswith("(no au_graph table)") and np.allclose(a.sum(1), 1)
    store.write_part("au_graph", "graph", graph_table("r0", ("AU01", "AU02"), cooccurrence(presence)))
    assert au_graph_for(store, ["AU01", "AU02"], presence)[1] == "au_graph table"
    assert "lacks AU04" in au_graph_for(store, ["AU01", "AU04"], presence)[1]
    t = store.read("au_graph")
    store.write_part("au_graph", "graph", t.slice(0, 3))  # a pair missing: not silently replaced
    with pytest.raises(ValueError, match="incomplete"):
        au_graph_for(store, ["AU01", "AU02"], presence)


def test_fold_workers_auto_and_threads_share_out_the_cores(monkeypatch):
    import ferclean.train.config as C

    monkeypatch.setattr(C, "physical_cores", lambda: 2)
    cfg = tiny_cfg(fold_workers="auto")
    assert cfg.resolved_fold_workers(3) == 2 and cfg.resolved_fold_workers(1) == 1
    assert cfg.resolved_fold_workers(3, 5000) == 2
    assert cfg.resolved_fold_workers(3, 500) == 1  # a small collection: not worth a worker's start-up
    assert TrainConfig().fold_workers == "auto"
    assert tiny_cfg(fold_workers=1).resolved_fold_workers(3) == 1
    assert tiny_cfg(fold_workers=5).resolved_fold_workers(3) == 3  # never more processes than folds
    assert cfg.threads_per_fold_worker(2) == 1 and cfg.threads_per_fold_worker(1) == 2
    assert cfg.threads_per_fold_worker(3) == 1
    monkeypatch.setattr(C, "physical_cores", lambda: 16)
    assert cfg.resolved_fold_workers(3) == 3 and cfg.threads_per_fold_worker(3) == 2  # at most 2 threads
    with pytest.raises(ValueError, match="fold_workers"):
        tiny_cfg(fold_workers=0)
    assert tiny_cfg(fold_workers="auto", device="cuda").resolved_fold_workers(3) == 1


def test_a_fold_worker_imports_only_the_engine():
    # a spawned fold process unpickles ferclean.train.engine.fit_and_score_fold; importing it must not pull in
    # the stage, the store, sklearn or pandas (each worker paid ~5 s of imports for them on 2 shared cores)
    import subprocess
    import sys

    code = ("import sys, pickle; from ferclean.train.engine import fit_and_score_fold as f; "
            "pickle.loads(pickle.dumps(f)); heavy = [m for m in ('ferclean.train.stage', 'ferclean.store', "
            "'sklearn', 'pandas', 'pyarrow', 'cv2') if m in sys.modules]; print(heavy); assert not heavy")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stdout + r.stderr

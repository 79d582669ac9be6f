"""Warm start (`train.init_model`, `curate --init-model`): tiny tensors, a tiny train stage, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_train import CLASSES, make_store, tiny_cfg, toy_images

from ferclean.runs import open_run
from ferclean.train import run_train
from ferclean.train.engine import fit
from ferclean.train.model_io import save_model
from ferclean.train.models import build_model
from ferclean.train.warm_start import apply_init_model, check_compatible, model_fingerprint, warm_state


def test_warm_state_matches_classes_by_name_and_keeps_what_does_not_fit():
    fresh = {"backbone.w": torch.zeros(2, 3), "classifier.weight": torch.zeros(3, 2),
             "classifier.bias": torch.zeros(3), "a_bar": torch.zeros(2, 2), "node_map.weight": torch.zeros(4, 2)}
    saved = {"backbone.w": torch.ones(2, 3), "classifier.weight": torch.tensor([[1.0, 1.0], [2.0, 2.0]]),
             "classifier.bias": torch.tensor([1.0, 2.0]), "a_bar": torch.ones(2, 2),
             "node_map.weight": torch.ones(5, 2)}
    state, info = warm_state(fresh, saved, ["happy", "neutral"], ["neutral", "happy", "contempt"])
    assert torch.equal(state["backbone.w"], torch.ones(2, 3))
    assert state["classifier.weight"].tolist() == [[2.0, 2.0], [1.0, 1.0], [0.0, 0.0]]  # by name; contempt fresh
    assert state["classifier.bias"].tolist() == [2.0, 1.0, 0.0]
    assert torch.equal(state["a_bar"], torch.zeros(2, 2))  # the run's own AU graph
    assert torch.equal(state["node_map.weight"], torch.zeros(4, 2))  # shape differs: fresh
    assert info == {"copied": 1, "fresh": 1, "classes_matched": 2, "classes": 3}


def test_check_compatible_is_one_line():
    check_compatible({"backbone": "cnn", "input_size": 48, "width": 32}, "cnn", 48, 32)
    with pytest.raises(ValueError, match=r"input_size 32 vs 48") as e:
        check_compatible({"backbone": "cnn", "input_size": 32, "width": 32}, "cnn", 48, 32)
    assert "\n" not in str(e.value)


def _saved_model(tmp_path, **kw):
    x, y = toy_images(36)
    cfg = tiny_cfg(**kw)
    res = fit(x, y, "ce", cfg)
    return save_model(res, cfg, [], tmp_path / "init_model"), res


def test_apply_init_model_loads_the_saved_network(tmp_path):
    path, res = _saved_model(tmp_path, epochs=1)
    net = build_model("cnn", 3, None, 16, 4)
    info = apply_init_model(net, str(path), CLASSES, "cnn", 16, 4)
    assert info["classes_matched"] == 3
    for k, v in res.model.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    with pytest.raises(ValueError, match="width 4 vs 8"):
        apply_init_model(build_model("cnn", 3, None, 16, 8), str(path), CLASSES, "cnn", 16, 8)


def test_a_warm_started_fit_begins_where_the_init_model_ended(tmp_path):
    path, res = _saved_model(tmp_path, epochs=4)
    x, y = toy_images(36, seed=1)
    cold = fit(x, y, "ce", tiny_cfg(epochs=1, lr=1e-6))
    warm = fit(x, y, "ce", tiny_cfg(epochs=1, lr=1e-6, init_model=str(path)))
    assert warm.history[0]["acc"] > cold.history[0]["acc"] + 0.2


def test_run_train_records_the_init_models_fingerprint(tmp_path):
    path, _ = _saved_model(tmp_path, epochs=1)
    store, _ = make_store(tmp_path)
    cfg = tiny_cfg(methods=["ce"], final_method="ce", epochs=1, init_model=str(path))
    with open_run(store, "train", {}) as run:
        summary = run_train(store, run, cfg, progress=False)
    fp = model_fingerprint(path)
    assert summary["init_model"] == {"path": str(path), "fingerprint": fp}
    assert json.loads(store.read("runs")["config"][0].as_py())["init_model"]["fingerprint"] == fp
    assert json.loads((store.root / "model" / "model.json").read_text())["init_model"]["fingerprint"] == fp
    # the init model's own opinion of every sample is stored as a view (method init_model, fold -1) ...
    preds = store.read("predictions").to_pandas()
    init = preds[(preds.method == "init_model") & (preds.fold == -1)].set_index("sample_id")
    assert set(init.index) == set(preds[(preds.method == "ce") & (preds.fold >= 0)].sample_id)  # the trained ones
    p_init = np.stack(init.probs.to_numpy())
    np.testing.assert_allclose(p_init.sum(axis=1), 1.0, atol=1e-5)
    # ... and the relabel stage mixes it in with init_model_weight (w 1: the init model's opinion alone)
    from ferclean.noise import RelabelConfig
    from ferclean.relabel import run_relabel

    got = {}
    for w in (0.0, 1.0):
        cfg_r = RelabelConfig(method="ce", rule="threshold", calibrate=False, au_view_weight=0, init_model_weight=w)
        with open_run(store, "relabel", {}) as run:
            res = run_relabel(store, run, cfg_r, progress=False)
            rows = store.read("relabels").to_pandas()
            got[w] = rows[rows.run_id == run.run_id].set_index("sample_id").p_suggested
    assert res["init_model"].startswith("weight 1.0")
    np.testing.assert_allclose(got[1.0].loc[init.index].to_numpy(), p_init.max(axis=1), atol=1e-5)
    assert not np.allclose(got[0.0].loc[init.index].to_numpy(), got[1.0].loc[init.index].to_numpy())
    bad = tiny_cfg(methods=["ce"], final_method="ce", epochs=1, init_model=str(path), input_size=24)
    with open_run(store, "train", {}) as run, pytest.raises(ValueError, match="input_size 16 vs 24"):
        run_train(store, run, bad, progress=False)


def test_curate_cli_takes_init_model(tmp_path):
    """Journey: `curate --init-model DIR` starts training from DIR's model and records its fingerprint."""
    pytest.importorskip("prefect")
    from conftest import two_class_folder

    init, _ = _saved_model(tmp_path, epochs=1, input_size=48)  # classes neutral, happy, sad
    src = tmp_path / "col"
    two_class_folder(src, 12)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("faces: {contact_sheet_n: 0}\ntrain: {classes: [happy, sad], input_size: 48, width: 4, "
                   "epochs: 1, folds: 2, backbone: cnn, methods: [ce], final_method: ce, device: cpu}\n")
    out = tmp_path / "out"
    env = {**os.environ, "FERCLEAN_NO_PROGRESS": "1"}
    bad = subprocess.run([sys.executable, "-m", "ferclean.cli", "curate", str(src), "--out", str(out),
                          "--init-model", str(tmp_path / "nowhere")], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "holds no trained model" in " ".join(bad.stderr.split())
    r = subprocess.run([sys.executable, "-m", "ferclean.cli", "curate", str(src), "--out", str(out), "--config",
                        str(cfg), "--until", "train", "--init-model", str(init), "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["init_model"]["fingerprint"] == model_fingerprint(init)
    np.testing.assert_equal(meta["classes"], ["happy", "sad"])


def test_curate_deployment_passes_init_model():
    pytest.importorskip("prefect")
    from flows.curate import curate_plan
    from flows.deploy import build_deployments

    (cur,) = build_deployments("/data/in.csv", "/data/out", init_model="/data/out/model")
    assert cur.parameters["init_model"] == "/data/out/model"
    (plain,) = build_deployments("/data/in.csv", "/data/out")
    assert "init_model" not in plain.parameters
    _, configs = curate_plan("/data/in.csv", "train", None, None, 1, init_model="/m")
    assert configs["train"].init_model == "/m"


def test_crossfit_folds_in_parallel_processes_match_the_sequential_ones():
    from test_train import toy_images

    from ferclean.train import crossfit

    x, y = toy_images(36)
    seen: list[int] = []
    seq = crossfit(x, y, "ce", tiny_cfg(epochs=1, folds=3))
    par = crossfit(x, y, "ce", tiny_cfg(epochs=1, folds=3, fold_workers=2), on_fold=lambda k, *_: seen.append(k))
    assert sorted(seen) == [0, 1, 2]
    np.testing.assert_allclose(par["probs"], seq["probs"], atol=1e-5)


def test_mix_views_leaves_rows_without_an_opinion_alone():
    from ferclean.au_view import mix_views

    p = np.array([[0.8, 0.2], [0.4, 0.6]])
    o = np.array([[0.0, 1.0], [np.nan, np.nan]])
    np.testing.assert_allclose(mix_views(p, o, 0.5), [[0.4, 0.6], [0.4, 0.6]])
    np.testing.assert_allclose(mix_views(p, None, 0.5), p)
    np.testing.assert_allclose(mix_views(p, o, 0.0), p)

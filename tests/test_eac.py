"""EAC (Erasing Attention Consistency) as a training method: feature maps, CAMs, the consistency
loss, random erasing and a fit on tiny synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train import CLASSES, make_store, tiny_cfg, toy_images

from ferclean.runs import open_run
from ferclean.train import losses as L
from ferclean.train import run_train
from ferclean.train.data import random_erase
from ferclean.train.engine import fit, predict
from ferclean.train.models import build_model, feature_maps, resnet18_backbone


def _symmetrise(model: torch.nn.Module) -> torch.nn.Module:
    """Make every conv kernel mirror-symmetric along the width: the network becomes flip-equivariant."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)
    return model


def test_flip_consistency_is_mse_against_the_flipped_back_maps():
    cam = torch.arange(8, dtype=torch.float32).reshape(1, 1, 2, 4)
    assert float(L.flip_consistency(cam, cam.flip(-1))) == 0.0  # the mirror's maps, flipped back: equal
    other = torch.zeros_like(cam)
    assert float(L.flip_consistency(cam, other)) == pytest.approx(float((cam**2).mean()))
    # not symmetric in a plain sense: cam vs cam itself differs once flipped
    assert float(L.flip_consistency(cam, cam)) == pytest.approx(float(((cam - cam.flip(-1)) ** 2).mean()))


def test_feature_maps_and_cam_shapes_cnn():
    torch.manual_seed(0)
    model = build_model("cnn", 3, None, 32, width=4).eval()
    x = torch.randn(5, 1, 32, 32)
    out = model(x, with_aux=False, maps=True)
    assert out["maps"].shape == (5, 32, 2, 2)  # 8 * width channels, 32 px / 2^4
    assert torch.allclose(out["feat"], model(x)["feat"], atol=1e-6)  # feat = mean of the maps
    cam = model.class_activation_maps(out["maps"])
    assert cam.shape == (5, 3, 2, 2) and cam.dtype == torch.float32
    # the spatial mean of CAM_c plus the bias is the logit of class c
    assert torch.allclose(cam.mean(dim=(2, 3)) + model.classifier.bias, out["logits"], atol=1e-5)
    assert "maps" not in model(x)


def test_feature_maps_of_resnet18_pool_to_its_features():
    torch.manual_seed(0)
    bb = resnet18_backbone(16).eval()
    x = torch.randn(2, 1, 16, 16)
    maps = feature_maps(bb, x)
    assert maps.shape == (2, 512, 2, 2)
    assert torch.allclose(maps.mean(dim=(2, 3)), bb(x), atol=1e-5)


@torch.no_grad()
def test_consistency_is_zero_for_a_flip_equivariant_network_and_not_otherwise():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 32, 32)
    pair = torch.cat([x, x.flip(-1)])

    def relative_inconsistency(model: torch.nn.Module) -> float:  # consistency / mean CAM^2
        cams = model.class_activation_maps(model.eval()(pair, maps=True)["maps"])
        return float(L.flip_consistency(cams[:4], cams[4:]) / cams.pow(2).mean())

    assert relative_inconsistency(build_model("cnn", 3, None, 32, width=4)) > 0.01
    assert relative_inconsistency(_symmetrise(build_model("cnn", 3, None, 32, width=4))) < 1e-8


def test_random_erase_rectangles():
    x = torch.ones(64, 1, 20, 20)
    assert torch.equal(random_erase(x, torch.Generator().manual_seed(0), p=0.0), x)
    out = random_erase(x, torch.Generator().manual_seed(0), p=1.0, scale=(0.02, 0.25), value=0.0)
    assert out.shape == x.shape and torch.equal(x, torch.ones_like(x))  # input untouched
    erased = (out == 0).reshape(64, -1).sum(1).float() / 400
    assert (erased > 0).all() and (erased <= 0.25 + 0.06).all()  # one rectangle each, area within scale (+ rounding)
    for img in out[:, 0]:  # the erased pixels form one axis-aligned rectangle
        r, c = torch.nonzero(img == 0, as_tuple=True)
        assert len(r) == (int(r.max()) - int(r.min()) + 1) * (int(c.max()) - int(c.min()) + 1)
    again = random_erase(x, torch.Generator().manual_seed(0), p=1.0)
    assert torch.equal(out, again)  # seeded
    half = random_erase(torch.ones(400, 1, 20, 20), torch.Generator().manual_seed(1), p=0.5)
    share = float(((half == 0).reshape(400, -1).any(1)).float().mean())
    assert 0.4 < share < 0.6


def test_eac_learns_toy_task_and_logs_consistency():
    x, y = toy_images(72)
    res = fit(x, y, "eac", tiny_cfg(epochs=4, checkpoint=False, lr_milestones=(1.0, 1.0), eac_lambda=1.0))
    out = predict(res.model, x, "eac", tta_flip=True)
    assert (out["probs"].argmax(1) == y).mean() > 0.8
    assert out["alpha"] is None and out["sem_dist"] is None
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["consistency"]) for h in res.history)
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]


def test_eac_consistency_term_lowers_the_flip_inconsistency():
    # same seed and data; lambda = 0 is plain CE on erased images, lambda = 20 must make the CAMs more flip-consistent
    x, y = toy_images(96, size=32)
    cfg = {"input_size": 32, "epochs": 3, "checkpoint": False, "lr_milestones": (1.0, 1.0)}
    xs = torch.as_tensor(x).float().unsqueeze(1) / 127.5 - 1
    pair = torch.cat([xs, xs.flip(-1)])

    def inconsistency(lam: float) -> float:
        m = fit(x, y, "eac", tiny_cfg(eac_lambda=lam, **cfg)).model.eval()
        with torch.no_grad():
            cams = m.class_activation_maps(m(pair, maps=True)["maps"])
        return float(L.flip_consistency(cams[:96], cams[96:]))

    assert inconsistency(20.0) < 0.5 * inconsistency(0.0)


def test_eac_under_bf16_autocast_on_cpu():
    x, y = toy_images(48)
    res = fit(x, y, "eac", tiny_cfg(amp="bf16", epochs=2, checkpoint=False))
    assert all(np.isfinite(h["loss"]) and h["consistency"] >= 0 for h in res.history)
    out = predict(res.model, x, "eac", amp=True)
    assert np.isfinite(out["probs"]).all()


def test_run_train_with_eac_as_the_method(tmp_path):
    store, _ = make_store(tmp_path, n=36)
    cfg = tiny_cfg(methods=["eac"], final_method="eac", epochs=1, au_view=False)
    with open_run(store, "train", cfg.model_dump(mode="json")) as run:
        summary = run_train(store, run, cfg)
    p = store.read("predictions").to_pandas()
    assert set(p.method) == {"eac"} and sorted(set(p.fold)) == [-1, 0, 1]
    assert summary["methods"] == ["eac"]
    assert len(CLASSES) == len(p.probs.iloc[0])

"""Training loop (one model, one method) with per-epoch checkpoints, and batched inference.

Methods:
- ce: plain cross-entropy.
- scn: SCN's logit-weighted CE (alpha only) + rank regularisation (ratio 0.7, margin 0.15),
  loss = g * RR + (1 - g) * WCE with g = 0.5, and margin relabeling (delta_2 = 0.2) of the
  low-importance group after `relabel_start` of the epochs.
- ulcag_target: ULC-AG target branch only: WCE with alpha and batch class weights gamma (eq. 3)
  + RR (phi = 0.8, theta = 0.15).
- ulcag_aux: auxiliary branch only: plain CE + alpha-free AU loss; the confidence that splits
  high/low groups is the detached softmax p(y) because alpha is not trained (paper: alpha is
  "calculated but not applied").
- ulcag: both branches, total loss eq. 11 with ramps eq. 12-13 (beta = warm-up epoch).
- eac: Erasing Attention Consistency (Zhang et al., ECCV 2022): each augmented batch x gets random
  erasing, x' is its mirror; both go through the network in one batch; loss = CE(x, y) +
  eac_lambda * MSE(CAM(x), flip(CAM(x'))) with CAM_c = sum_k w_{c,k} F_k over the backbone's
  feature maps F before pooling and the classifier weights w, for every class.

Auxiliary branch schedule: during the first `aux_warmup` fraction of the epochs only the target
loss trains; templates are still tracked (EMA over batches, eq. 8). From the warm-up epoch the
AU loss joins with weight lambda_2; from the epoch after it, low-confidence samples are relabeled
with the semantic rule (eq. 10). Relabels persist in the training labels for later epochs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ferclean.train import losses as L
from ferclean.train.augment import augment, random_erase, to_tensor
from ferclean.train.config import TrainConfig
from ferclean.train.models import FERNet, build_model

AUX_METHODS = ("ulcag", "ulcag_aux")
ALPHA_METHODS = ("scn", "ulcag", "ulcag_target")


@dataclass
class FitResult:
    """A trained model with what inference needs (templates, logit scale) and its history."""

    model: FERNet
    method: str
    labels: np.ndarray  # (N,) int64 training labels after in-training relabeling
    templates: torch.Tensor | None  # (C, S) semantic templates
    logit_scale: float  # mean gamma_{y} used at inference (1.0 when unused)
    history: list[dict[str, Any]] = field(default_factory=list)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


DEVICE_IMAGES_FRACTION = 0.25  # keep the training images on the GPU when they need at most this share of its free memory


def stage_images(imgs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Where the (N, H, W) uint8 training images live during `fit`.

    CPU: unchanged. CUDA: on the GPU itself when they fit in DEVICE_IMAGES_FRACTION of its free
    memory (all of FER2013 at 48 px is 66 MB, at 224 px 1.4 GB), so batches are gathered there
    with no host-to-device copy; otherwise in pinned host memory.
    """
    if device.type != "cuda":
        return imgs
    free, _ = torch.cuda.mem_get_info(device)
    if imgs.numel() * imgs.element_size() <= DEVICE_IMAGES_FRACTION * free:
        return imgs.to(device)
    return imgs.pin_memory()


def fit(
    images: np.ndarray,
    labels: np.ndarray,
    method: str,
    cfg: TrainConfig,
    au_targets: np.ndarray | None = None,
    a_bar: np.ndarray | None = None,
    ckpt_path: Path | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train one model.

    images: (N, H, W) uint8 at cfg.input_size; labels: (N,) int64 class indices;
    au_targets: (N, M) float 0/1/NaN pseudo AUs and a_bar: (M, M) row-normalised graph (needed by
    ulcag and ulcag_aux). ckpt_path: checkpoint file; a matching one resumes after its epoch.
    """
    if method in AUX_METHODS and (au_targets is None or a_bar is None):
        raise ValueError(f"method {method} needs pseudo AUs and an AU graph")
    torch.set_num_threads(cfg.num_threads)
    _seed_all(cfg.seed)
    device = torch.device(cfg.resolved_device())
    cuda = device.type == "cuda"
    amp = cfg.resolved_amp()
    n_classes = len(cfg.classes)
    graph = torch.as_tensor(a_bar) if (a_bar is not None and method in AUX_METHODS) else None
    model = build_model(cfg.resolved_backbone(), n_classes, graph, cfg.input_size, cfg.width,
                        cfg.au_dim, cfg.gcn_channels, cfg.pretrained).to(device)
    if cfg.init_model:
        from ferclean.train.warm_start import apply_init_model

        apply_init_model(model, cfg.init_model, list(cfg.classes), cfg.resolved_backbone(), cfg.input_size, cfg.width)
    # channels_last on every device: on CPU (oneDNN) a training step of the default 48 px network takes 23 %
    # less CPU time under bf16 autocast (5.65 -> 4.35 ms per image, 1 thread; benchmarks/results/crossfit_parallel.md)
    model = model.to(memory_format=torch.channels_last)
    aux_ids = {id(p) for p in model.aux_parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in aux_ids], "base_lr": cfg.lr}]
    if aux_ids:
        groups.append({"params": model.aux_parameters(), "base_lr": cfg.aux_lr})
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                                     weight_decay=cfg.weight_decay, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    imgs = stage_images(torch.as_tensor(images), device)
    cur = np.asarray(labels, dtype=np.int64).copy()
    aus = torch.as_tensor(au_targets, dtype=torch.float32) if au_targets is not None else None
    n = len(cur)
    templates = seen = None
    if graph is not None:
        s_dim = graph.shape[0] * cfg.gcn_channels
        templates = torch.zeros(n_classes, s_dim, device=device)
        seen = torch.zeros(n_classes, dtype=torch.bool, device=device)
    history: list[dict[str, Any]] = []
    start, resumed_scale = 0, 1.0
    if cfg.checkpoint and ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state.get("n") == n and state.get("method") == method:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            cur = state["labels"]
            templates, seen = state["templates"], state["seen"]
            history = state["history"]
            start = state["epoch"] + 1
            resumed_scale = float(state.get("logit_scale", 1.0))

    warm = round(cfg.aux_warmup * cfg.epochs)
    relabel_epoch = round(cfg.relabel_start * cfg.epochs)
    gamma_sum, gamma_n = 0.0, 0
    for epoch in range(start, cfg.epochs):
        model.train()
        factor = L.step_lr_factor(epoch, cfg.epochs, tuple(cfg.lr_milestones))
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        perm = torch.randperm(n, generator=gen)
        aux_on = method in AUX_METHODS and epoch >= warm
        lam1 = L.ramp_target(epoch, warm) if method in AUX_METHODS else 1.0
        lam2 = L.ramp_aux(epoch, warm) if aux_on else 0.0
        tot_loss, tot_ok, tot_n, n_relabel, tot_cons = 0.0, 0, 0, 0, 0.0
        gamma_sum, gamma_n = 0.0, 0
        t0 = time.perf_counter()
        for b in range(0, n, cfg.batch_size):
            idx = perm[b : b + cfg.batch_size]
            if len(idx) < 2:
                continue
            x = to_tensor(imgs[idx].to(device, non_blocking=True))  # uint8 over the bus, float on the device
            if cfg.augment:
                x = augment(x, gen)
            eac = method == "eac"
            if eac:  # erased images and their mirrors in one batch (BatchNorm sees both)
                x = random_erase(x, gen, cfg.eac_erase_p, tuple(cfg.eac_erase_scale))
                x = torch.cat([x, torch.flip(x, dims=[3])])
            x = x.contiguous(memory_format=torch.channels_last)
            y = torch.as_tensor(cur[idx.numpy()], device=device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x, with_aux=graph is not None, maps=eac)
            logits = out["logits"].float()
            alpha = out["alpha"].float()
            relabeled = None
            if eac:
                m = len(idx)
                cams = model.class_activation_maps(out["maps"])  # float32
                cons = L.flip_consistency(cams[:m], cams[m:])
                logits, alpha = logits[:m], alpha[:m]
                loss = F.cross_entropy(logits, y) + cfg.eac_lambda * cons
                tot_cons += float(cons.detach()) * m
            elif method == "ce":
                loss = F.cross_entropy(logits, y)
            elif method == "scn":
                wce = L.logit_weighted_ce(logits, y, alpha)
                rr = L.rank_regularization(alpha, cfg.scn_ratio, cfg.scn_margin)
                loss = cfg.scn_rr_weight * rr + (1 - cfg.scn_rr_weight) * wce
                if epoch >= relabel_epoch:
                    low = ~L.high_confidence_mask(alpha.detach(), cfg.scn_ratio)
                    new = L.margin_relabel(F.softmax(logits.detach(), 1)[low], y[low], cfg.scn_delta)
                    relabeled = (low, new)
            else:
                gamma = L.class_weights(y, n_classes)
                if method in ("ulcag", "ulcag_target"):
                    wce = L.logit_weighted_ce(logits, y, alpha, gamma)
                    rr = L.rank_regularization(alpha, cfg.phi, cfg.theta)
                    conf = alpha.detach()
                    gamma_sum += float(gamma[y].sum())
                    gamma_n += len(y)
                else:  # ulcag_aux: alpha not applied
                    wce, rr = F.cross_entropy(logits, y), torch.zeros((), device=device)
                    conf = F.softmax(logits.detach(), 1).gather(1, y.reshape(-1, 1)).reshape(-1)
                if method == "ulcag_target":
                    loss = wce + rr
                else:
                    sem = out["sem"].float()
                    mask = L.high_confidence_mask(conf, cfg.phi)
                    tb, cnt = L.batch_templates(sem.detach(), conf, y, mask, n_classes)
                    templates, seen = L.update_templates(templates, seen, tb, cnt, cfg.template_momentum)
                    l_au = torch.zeros((), device=device)
                    if aux_on:
                        l_au = L.weighted_au_bce(out["au_logits"].float(), aus[idx].to(device), conf)
                    loss = L.ulcag_total(wce, rr, l_au, lam1, lam2)
                    if aux_on and epoch > warm and bool(seen.all()):
                        low = ~mask
                        dist = L.cosine_distance(sem.detach()[low], templates)
                        new = L.semantic_relabel(dist, y[low], cfg.semantic_margin)
                        if cfg.relabel_guard == "classifier":
                            new = L.guard_relabel(new, y[low], logits.detach()[low])
                        relabeled = (low, new)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if relabeled is not None:
                low, new = relabeled
                low_idx = idx.numpy()[low.cpu().numpy()]
                new_np = new.cpu().numpy()
                n_relabel += int((cur[low_idx] != new_np).sum())
                cur[low_idx] = new_np
            tot_loss += float(loss.detach()) * len(idx)
            tot_ok += int((logits.detach().argmax(1) == y).sum())
            tot_n += len(idx)
        secs = time.perf_counter() - t0
        row = {"method": method, "epoch": epoch, "loss": tot_loss / max(tot_n, 1), "acc": tot_ok / max(tot_n, 1),
               "lr": cfg.lr * factor, "lambda1": lam1, "lambda2": lam2, "relabeled": n_relabel,
               "changed_total": int((cur != labels).sum()), "seconds": secs, "samples_per_s": tot_n / max(secs, 1e-9)}
        if method == "eac":
            row["consistency"] = tot_cons / max(tot_n, 1)
        history.append(row)
        if cfg.checkpoint and ckpt_path is not None:
            _save_atomic({"epoch": epoch, "n": n, "method": method, "model": model.state_dict(),
                          "opt": opt.state_dict(), "labels": cur, "templates": templates, "seen": seen,
                          "history": history, "logit_scale": gamma_sum / gamma_n if gamma_n else 1.0}, ckpt_path)
        if log:
            log(row)
    scale = gamma_sum / gamma_n if gamma_n else resumed_scale
    return FitResult(model=model, method=method, labels=cur, templates=templates, logit_scale=scale, history=history)


def fit_and_score_fold(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray, method: str,
                       cfg: TrainConfig, aus: np.ndarray | None, a_bar: np.ndarray | None, ckpt: Path | None,
                       log: Callable[[dict[str, Any]], None] | None = None) -> tuple[FitResult, dict[str, Any]]:
    """Train one cross-fitted fold and score its held-out images.

    Lives here, not in the stage module, so a spawned fold worker unpickles it by importing only
    torch and ferclean.train's engine modules (not the store, sklearn and the verdict code).
    """
    res = fit(train_images, train_labels, method, cfg, aus, a_bar, ckpt_path=ckpt, log=log)
    out = predict(res.model, test_images, method, res.templates, res.logit_scale, tta_flip=cfg.tta_flip,
                  amp=cfg.resolved_amp())
    return res, out


@torch.no_grad()
def predict(
    model: FERNet,
    images: np.ndarray,
    method: str,
    templates: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    batch_size: int = 512,
    tta_flip: bool = True,
    device: str | None = None,
    amp: bool | None = None,
) -> dict[str, np.ndarray | None]:
    """Score images (N, H, W) uint8.

    Returns probs (N, C), alpha (N,) (None for ce/ulcag_aux), sem_dist (N, C) (None without
    templates) and embeddings (N, D) (backbone features). Probabilities are
    softmax(alpha_i * logit_scale * z_i) for the alpha methods, i.e. on the scale the logits were
    trained at (eq. 2-3), softmax(z_i) otherwise; averaged over the image and its mirror.
    """
    dev = torch.device(device or next(model.parameters()).device)
    amp = dev.type == "cuda" if amp is None else amp  # None: bfloat16 autocast on CUDA only
    model.eval()
    use_sem = templates is not None and model.n_aus > 0
    probs, alphas, dists, embs = [], [], [], []
    for b in range(0, len(images), batch_size):
        x = to_tensor(torch.as_tensor(images[b : b + batch_size]).to(dev))
        views = [x, torch.flip(x, dims=[3])] if tta_flip else [x]
        p_acc, a_acc, s_acc, e_acc = 0.0, 0.0, 0.0, 0.0
        for v in views:
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                out = model(v, with_aux=use_sem)
            z, a = out["logits"].float(), out["alpha"].float()
            scale = (a * logit_scale).reshape(-1, 1) if method in ALPHA_METHODS else 1.0
            p_acc = p_acc + F.softmax(z * scale, 1)
            a_acc = a_acc + a
            e_acc = e_acc + out["feat"].float()
            if use_sem:
                s_acc = s_acc + out["sem"].float()
        k = len(views)
        probs.append((p_acc / k).cpu())
        alphas.append((a_acc / k).cpu())
        embs.append((e_acc / k).cpu())
        if use_sem:
            dists.append(L.cosine_distance(s_acc / k, templates.to(dev).float()).cpu())
    cat = lambda xs: torch.cat(xs).numpy() if xs else None
    return {
        "probs": cat(probs),
        "alpha": cat(alphas) if method in ALPHA_METHODS else None,
        "sem_dist": cat(dists) if use_sem else None,
        "embeddings": cat(embs),
    }

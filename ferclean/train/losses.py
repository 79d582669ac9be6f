"""Pure loss functions and label rules of SCN and ULC-AG (torch in, torch out; no state).

Notation: N samples in a batch, C classes, M action units, S semantic-feature size.
Equation numbers refer to ULC-AG (Liu et al., ICPR 2022) unless marked SCN (Wang et al., CVPR 2020).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class-oriented weights gamma_j = 1 - N_j / N of one batch (eq. 2).

    labels: (N,) int64 -> (C,) float32; a class absent from the batch gets weight 1.
    """
    counts = torch.bincount(labels, minlength=n_classes).to(torch.float32)
    return 1.0 - counts / max(int(labels.numel()), 1)


def logit_weighted_ce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: torch.Tensor,
    gamma: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logit-weighted cross-entropy: mean_i CE(alpha_i * gamma_{y_i} * z_i, y_i).

    logits z: (N, C); labels: (N,); alpha: (N,) in (0, 1); gamma: (C,) or None (SCN eq. 2 when
    None, ULC-AG eq. 3 otherwise). Returns a scalar.
    """
    scale = alpha.reshape(-1, 1)
    if gamma is not None:
        scale = scale * gamma[labels].reshape(-1, 1)
    return F.cross_entropy(logits * scale, labels)


def rank_regularization(alpha: torch.Tensor, ratio: float, margin: float) -> torch.Tensor:
    """Rank regularisation max(0, margin - (mean_high - mean_low)) (eq. 4; SCN eq. 3).

    alpha: (N,) confidences. The top round(ratio * N) weights form the high group (at least one
    sample in each group). Returns a scalar; zero for N < 2.
    """
    n = int(alpha.numel())
    if n < 2:
        return alpha.sum() * 0.0
    k = min(max(round(ratio * n), 1), n - 1)
    ordered, _ = torch.sort(alpha.reshape(-1), descending=True)
    return torch.clamp(margin - (ordered[:k].mean() - ordered[k:].mean()), min=0.0)


def high_confidence_mask(alpha: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean (N,) mask of the top round(ratio * N) confidences (ties broken by position)."""
    n = int(alpha.numel())
    k = min(max(round(ratio * n), 1), n)
    idx = torch.argsort(alpha.reshape(-1), descending=True, stable=True)[:k]
    mask = torch.zeros(n, dtype=torch.bool, device=alpha.device)
    mask[idx] = True
    return mask


def weighted_au_bce(au_logits: torch.Tensor, au_targets: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Confidence-weighted AU loss (eq. 7): mean_i alpha_i * sum_m BCE(p_im, z_im).

    au_logits, au_targets: (N, M) (targets 0/1, NaN = unknown and ignored); alpha: (N,).
    Callers pass a detached alpha so the loss cannot be lowered by shrinking alpha.
    """
    known = ~torch.isnan(au_targets)
    targets = torch.where(known, au_targets, torch.zeros_like(au_targets))
    bce = F.binary_cross_entropy_with_logits(au_logits, targets, reduction="none") * known
    return (alpha.reshape(-1) * bce.sum(dim=1)).mean()


def batch_templates(
    sem: torch.Tensor, alpha: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, n_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class semantic templates of one batch (eq. 8): T_j = (1/K_j) sum_k alpha_k s_k.

    sem: (N, S); alpha, labels, mask: (N,), mask selects the high-confidence samples.
    Returns templates (C, S) (zero rows for absent classes) and counts K (C,).
    """
    w = (alpha.reshape(-1) * mask.to(sem.dtype)).reshape(-1, 1)
    onehot = F.one_hot(labels, n_classes).to(sem.dtype) * mask.to(sem.dtype).reshape(-1, 1)
    sums = onehot.T @ (w * sem)
    counts = onehot.sum(dim=0)
    return sums / counts.clamp(min=1.0).reshape(-1, 1), counts


def update_templates(
    templates: torch.Tensor,
    seen: torch.Tensor,
    batch: torch.Tensor,
    counts: torch.Tensor,
    momentum: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exponential moving average of templates across batches.

    For each class present in the batch (counts > 0): T <- momentum * T + (1 - momentum) * T_batch,
    or T <- T_batch the first time the class is seen. templates, batch: (C, S); seen: (C,) bool.
    Returns the new (templates, seen).
    """
    present = counts > 0
    blended = momentum * templates + (1.0 - momentum) * batch
    fresh = present & ~seen
    new = torch.where(fresh.reshape(-1, 1), batch, torch.where(present.reshape(-1, 1), blended, templates))
    return new, seen | present


def cosine_distance(sem: torch.Tensor, templates: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SP_{i,j} = 1 - cos(s_i, t_j) (eq. 9). sem: (N, S), templates: (C, S) -> (N, C) in [0, 2]."""
    a = sem / sem.norm(dim=1, keepdim=True).clamp(min=eps)
    b = templates / templates.norm(dim=1, keepdim=True).clamp(min=eps)
    return (1.0 - a @ b.T).clamp(0.0, 2.0)


def semantic_relabel(dist: torch.Tensor, labels: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """ULC-AG relabel rule (eq. 10) for the low-confidence samples.

    dist: (N, C) semantic distances; labels: (N,). y' = argmin_{j != y} SP_j when
    SP_y - min_{j != y} SP_j > margin, else y. Returns (N,) int64.
    """
    masked = dist.clone()
    masked[torch.arange(len(labels)), labels] = float("inf")
    best = masked.argmin(dim=1)
    gap = dist.gather(1, labels.reshape(-1, 1)).reshape(-1) - masked.min(dim=1).values
    return torch.where(gap > margin, best, labels)


def guard_relabel(new: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Keep a proposed relabel only where the classifier agrees: new[i] if new[i] == argmax
    logits[i], else labels[i]. new, labels: (N,) int64; logits: (N, C). Returns (N,) int64."""
    return torch.where(new == logits.argmax(dim=1), new, labels)


def margin_relabel(probs: torch.Tensor, labels: torch.Tensor, delta: float = 0.2) -> torch.Tensor:
    """SCN relabel rule (SCN eq. 5): y' = argmax p when p_max - p_y > delta, else y.

    probs: (N, C); labels: (N,) -> (N,) int64.
    """
    p_max, arg = probs.max(dim=1)
    p_y = probs.gather(1, labels.reshape(-1, 1)).reshape(-1)
    return torch.where(p_max - p_y > delta, arg, labels)


def ramp_target(epoch: float, beta: float) -> float:
    """lambda_1 (eq. 12): exp(-(1 - epoch/beta)^2) up to epoch beta, then 1."""
    if beta <= 0 or epoch > beta:
        return 1.0
    return math.exp(-((1.0 - epoch / beta) ** 2))


def ramp_aux(epoch: float, beta: float) -> float:
    """lambda_2 (eq. 13): 1 up to epoch beta, then exp(-(1 - beta/epoch)^2)."""
    if epoch <= beta or epoch <= 0:
        return 1.0
    return math.exp(-((1.0 - beta / epoch) ** 2))


def ulcag_total(l_wce: torch.Tensor, l_rr: torch.Tensor, l_au: torch.Tensor, lam1: float, lam2: float) -> torch.Tensor:
    """Total loss (eq. 11): lambda_1 / 2 * (L_wce + L_rr) + lambda_2 * L_au."""
    return 0.5 * lam1 * (l_wce + l_rr) + lam2 * l_au


def step_lr_factor(epoch: int, epochs: int, milestones: tuple[float, ...] = (1 / 3, 2 / 3), gamma: float = 0.1) -> float:
    """Learning-rate multiplier of the paper's step schedule scaled to an epoch budget.

    ULC-AG divides the LR by 10 at epochs 10 and 20 of 30; here at fractions `milestones` of
    `epochs` (epoch is 0-based).
    """
    n = sum(1 for m in milestones if epoch >= round(m * epochs))
    return gamma**n


def flip_consistency(cam: torch.Tensor, cam_of_flipped: torch.Tensor) -> torch.Tensor:
    """EAC's attention consistency (Zhang et al., ECCV 2022): MSE(CAM(x), flip(CAM(flip(x)))).

    cam: (N, C, h, w) class activation maps of the images; cam_of_flipped: the maps of their
    horizontal mirrors, flipped back here along the width. Zero for a flip-equivariant network.
    Returns a scalar (mean over every element).
    """
    return F.mse_loss(cam, torch.flip(cam_of_flipped, dims=[3]))

"""Loop implementations of GHM and PISA as the reference implementation (mmdetection) computes them.

Not used for training. They are the executable statement of the semantics listed in
docs/losses-and-formulas.md, written from that description: per-bin loops with host syncs for
GHM, per-class / per-object loops for PISA's IoU-HLR. Tests hold the vectorized losses to them
(parity with `level_mode="reference"`, `ema_init="zero"`, `normalizer="global"`) and
bench/losses.py times them as the "straightforward loop" baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _bin_edges(bins: int, last: float) -> torch.Tensor:
    edges = torch.arange(bins + 1, dtype=torch.float32) / bins
    edges[-1] = last
    return edges


def _ghm_weights(
    g: torch.Tensor,
    valid: torch.Tensor,
    tot: float,
    acc: list[float],
    bins: int,
    momentum: float,
    last: float,
) -> torch.Tensor:
    """tot / (count or EMA) per bin, divided by the number of non-empty bins; updates `acc`."""
    edges = _bin_edges(bins, last).to(g.device)
    weights = torch.zeros_like(g)
    nonempty = 0
    for i in range(bins):
        inside = (g >= edges[i]) & (g < edges[i + 1]) & valid
        count = inside.sum().item()
        if count > 0:
            if momentum > 0:
                acc[i] = momentum * acc[i] + (1 - momentum) * count
                weights[inside] = tot / acc[i]
            else:
                weights[inside] = tot / count
            nonempty += 1
    return weights / nonempty if nonempty > 0 else weights


def reference_ghmc(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_weights: torch.Tensor,
    acc: list[float],
    bins: int = 30,
    momentum: float = 0.75,
) -> torch.Tensor:
    """One GHM-C call on (N, C) logits / targets / label weights; `acc` is the EMA state."""
    valid = label_weights > 0
    tot = max(valid.float().sum().item(), 1.0)
    g = (logits.detach().sigmoid() - targets).abs()
    weights = _ghm_weights(g, valid, tot, acc, bins, momentum, 1.0 + 1e-6)
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (loss * weights).sum() / tot


def reference_ghmr(
    pred: torch.Tensor,
    target: torch.Tensor,
    label_weights: torch.Tensor,
    acc: list[float],
    mu: float = 0.02,
    bins: int = 10,
    momentum: float = 0.7,
) -> torch.Tensor:
    """One GHM-R call on (N, 4) deltas with (N, 4) label weights; tot is the weights' sum."""
    diff = pred - target
    loss = torch.sqrt(diff * diff + mu * mu) - mu
    g = (diff / torch.sqrt(mu * mu + diff * diff)).abs().detach()
    tot = max(label_weights.float().sum().item(), 1.0)
    weights = _ghm_weights(g, label_weights > 0, tot, acc, bins, momentum, 1e3)
    return (loss * weights).sum() / tot


def reference_hlr_rank(
    ious: torch.Tensor, labels: torch.Tensor, gt_ids: torch.Tensor
) -> torch.Tensor:
    """IoU-HLR as the reference computes it: IoU += M - local rank, then rank within class."""
    score = ious.clone().float()
    max_per_class = int(torch.bincount(labels).max().item())
    rank = torch.zeros_like(labels)
    for label in labels.unique():
        in_class = (labels == label).nonzero().view(-1)
        for gt in gt_ids[in_class].unique():
            members = in_class[gt_ids[in_class] == gt]
            local = torch.argsort(torch.argsort(score[members], descending=True, stable=True))
            score[members] += max_per_class - local.float()
        order = torch.argsort(score[in_class], descending=True, stable=True)
        rank[in_class[order]] = torch.arange(len(in_class), device=labels.device)
    return rank


def reference_isr_p(
    ious: torch.Tensor,
    labels: torch.Tensor,
    gt_ids: torch.Tensor,
    pos_row_loss: torch.Tensor,
    k: float = 2.0,
    bias: float = 0.0,
) -> torch.Tensor:
    """Normalized ISR-P weights of the positives: one M (largest class count) for all classes,
    rescaled so that sum(w * row loss) equals sum(row loss) (row = focal loss over all classes)."""
    max_per_class = torch.bincount(labels).max().float()
    rank = reference_hlr_rank(ious, labels, gt_ids)
    weights = (bias + (max_per_class - rank.float()) / max_per_class * (1 - bias)).pow(k)
    return weights * pos_row_loss.sum() / (weights * pos_row_loss).sum()


def reference_carl(
    scores: torch.Tensor,
    reg_loss: torch.Tensor,
    k: float = 1.0,
    bias: float = 0.2,
    avg_factor: float | None = None,
) -> torch.Tensor:
    """CARL as the reference computes it: weights / mean (not detached), sum(w * loss) / avg."""
    weights = (bias + (1 - bias) * scores).pow(k)
    weights = weights * (len(scores) / weights.sum())
    per_sample = reg_loss.sum(-1) if reg_loss.dim() > 1 else reg_loss
    avg = float(len(scores)) if avg_factor is None else avg_factor
    return (per_sample / avg * weights).sum()

"""The papers' own analyses, on a trained model's outputs over a validation set.

- Focal Loss, Figure 4: the cumulative distribution of normalized loss of positives and
  negatives for several gamma.
- GHM, Figures 1-2: the distribution of CE's gradient norm g = |p - y|, and the gradient norm
  each loss gives a sample as a function of g (CE, FL, GHM-C); for GHM-R, the same binning of
  ASL1's gradient norm over the positives' box coordinates and where the regression gradient goes.
- PISA, Figure 4: IoU against classification loss of random, hard (top loss) and prime (top
  IoU-HLR) positives.

Samples are (anchor, class) elements of non-ignored anchors: y = 1 at a positive anchor's class
(positives), y = 0 otherwise (negatives), as sigmoid classification trains them. PISA's samples
are positive anchors. All numbers are returned as plain lists and floats for JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from train.assign import assign_anchors
from train.data.coco import collate_detections
from train.losses import GHMC, iou_hlr_rank, sigmoid_focal_loss
from train.losses.pisa import aligned_iou
from train.model.box_coder import decode_boxes, encode_boxes
from train.model.retinanet import RetinaDetector

FL_GAMMAS = (0.0, 0.5, 1.0, 2.0)
CDF_POINTS = 101
# The tail of Figure 4 at a readable scale: share of the loss in the hardest 1e-6 .. 100%.
HARDEST_FRACTIONS = np.logspace(-6, 0, 61)
GHM_BINS = 30
FL_GAMMA_FOR_GHM = 2.0
GHM_R_MU, GHM_R_BINS = 0.02, 10  # the paper's COCO settings
MAX_SCATTER_POINTS = 1000


@dataclass
class ValidationSamples:
    """logits, targets (E,): every non-ignored element; pos_*: (P,) per positive anchor.

    pos_iou: IoU of the regressed box with its object; pos_cls_loss: sigmoid CE summed over the
    anchor's classes; pos_labels: class index; pos_gt_ids: object id unique over the whole set;
    pos_box_error: (P, 4) predicted minus target deltas (what GHM-R bins).
    """

    logits: torch.Tensor
    targets: torch.Tensor
    pos_iou: torch.Tensor
    pos_cls_loss: torch.Tensor
    pos_labels: torch.Tensor
    pos_gt_ids: torch.Tensor
    num_images: int
    pos_box_error: torch.Tensor


def _batch_samples(
    model: RetinaDetector, images: torch.Tensor, targets: list[dict], id_offset: int
) -> tuple[dict[str, torch.Tensor], int]:
    """One batch's samples and the number of object ids it used (on the model's device)."""
    device = model.anchors.device
    cls_logits, box_deltas = model(images.to(device).float())
    assignment = assign_anchors(
        model.anchors,
        [t["boxes"].to(device) for t in targets],
        [t["labels"].to(device) for t in targets],
        [t["crowd_boxes"].to(device) for t in targets],
    )
    num_classes = cls_logits.shape[-1]
    valid, positive = assignment.valid, assignment.positive
    one_hot = F.one_hot(assignment.labels.clamp(min=0), num_classes).float()
    one_hot = one_hot * positive[..., None]
    anchors = assignment.anchors.expand(positive.shape[0], -1, -1)
    pos_deltas = box_deltas[positive].float()
    pos_boxes = decode_boxes(pos_deltas, anchors[positive])
    gt_deltas = encode_boxes(assignment.gt_boxes[positive].float(), anchors[positive].float())
    row_ce = F.binary_cross_entropy_with_logits(cls_logits, one_hot, reduction="none").sum(-1)
    gt_ids = assignment.gt_ids[positive]
    samples = {
        "logits": cls_logits[valid].reshape(-1).float(),
        "targets": one_hot[valid].reshape(-1),
        "pos_iou": aligned_iou(pos_boxes, assignment.gt_boxes[positive].float()),
        "pos_cls_loss": row_ce[positive].float(),
        "pos_labels": assignment.labels[positive],
        "pos_gt_ids": gt_ids + id_offset,
        "pos_box_error": pos_deltas - gt_deltas,
    }
    used = int(gt_ids.max()) + 1 if gt_ids.numel() else 0
    return samples, used


@torch.no_grad()
def collect_samples(
    model: RetinaDetector,
    dataset: Dataset,
    batch_size: int = 8,
    max_images: int | None = None,
    device: str = "cpu",
) -> ValidationSamples:
    """Run `model` (eval mode, on `device`) over `dataset` and gather, on the CPU, what the
    analyses need."""
    model = model.eval().to(device)
    if max_images is not None:
        dataset = Subset(dataset, range(min(max_images, len(dataset))))  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_detections)
    parts: dict[str, list[torch.Tensor]] = {}
    offset, count = 0, 0
    for images, targets in loader:
        samples, used = _batch_samples(model, images, targets, offset)
        offset += used
        count += len(images)
        for key, value in samples.items():
            parts.setdefault(key, []).append(value.cpu())
    return ValidationSamples(**{k: torch.cat(v) for k, v in parts.items()}, num_images=count)


def loss_cdf(losses: torch.Tensor, fractions: np.ndarray) -> list[float]:
    """Cumulative normalized loss at each fraction of samples, samples sorted by ascending loss.

    Points (i / n, sum of the i smallest losses / total), joined linearly: the curve of the
    Focal Loss paper's Figure 4. An empty or all-zero set gives the diagonal.
    """
    values = np.sort(losses.detach().double().cpu().numpy())
    total = values.sum()
    if len(values) == 0 or total <= 0:
        return [float(f) for f in fractions]
    x = np.arange(len(values) + 1) / len(values)
    y = np.concatenate([[0.0], np.cumsum(values)]) / total
    return [float(v) for v in np.interp(fractions, x, y)]


def focal_loss_cdfs(
    logits: torch.Tensor, targets: torch.Tensor, gammas: tuple[float, ...] = FL_GAMMAS
) -> dict[str, Any]:
    """Figure 4 of the Focal Loss paper: per group and gamma, the loss CDF on a fraction grid,
    the share of the loss carried by the hardest 1% and 10% of samples, and by the hardest
    fraction f for f on a log grid (`share_in_hardest`: the tail Figure 4 squeezes into a
    vertical line at x = 1).

    alpha is left out: a constant per group cancels in the normalization.
    """
    fractions = np.linspace(0.0, 1.0, CDF_POINTS)
    result: dict[str, Any] = {
        "fractions": fractions.tolist(),
        "hardest_fractions": HARDEST_FRACTIONS.tolist(),
        "gammas": list(gammas),
    }
    grid = np.asarray([0.0, 0.9, 0.99, *fractions, *(1.0 - HARDEST_FRACTIONS)])
    for group, mask in (("positives", targets > 0.5), ("negatives", targets <= 0.5)):
        x, y = logits[mask], targets[mask]
        curves = {}
        for gamma in gammas:
            loss = sigmoid_focal_loss(x, y, alpha=-1.0, gamma=gamma)
            cdf = loss_cdf(loss, grid)
            curves[f"{gamma:g}"] = {
                "cdf": cdf[3 : 3 + len(fractions)],
                "share_in_hardest": [1.0 - v for v in cdf[3 + len(fractions) :]],
                "share_of_loss_in_hardest_10pct": 1.0 - cdf[1],
                "share_of_loss_in_hardest_1pct": 1.0 - cdf[2],
            }
        result[group] = {"count": int(mask.sum()), "curves": curves}
    return result


def _per_bin_mean(values: torch.Tensor, bins: torch.Tensor, num_bins: int) -> list[float | None]:
    sums = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, values.double())
    counts = torch.bincount(bins, minlength=num_bins)
    return [float(s / c) if c else None for s, c in zip(sums, counts, strict=True)]


def ghm_gradient_stats(
    logits: torch.Tensor, targets: torch.Tensor, bins: int = GHM_BINS
) -> dict[str, Any]:
    """GHM Figures 1-2 on these samples.

    distribution: fraction of samples per g bin (Figure 1). reweighted: per bin, the mean
    gradient norm w.r.t. the logit that each loss gives a sample (Figure 2): CE (= g), FL
    (gamma 2, no alpha, through autograd) and GHM-C (g times the harmonizing weight N / GD(g)
    of one histogram over all these samples, no EMA), so all three are on CE's per-sample scale.
    """
    x = logits.detach().float()
    y = targets.float()
    g = (torch.sigmoid(x) - y).abs()
    index = (g * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins)
    x_grad = x.clone().requires_grad_(True)
    with torch.enable_grad():
        sigmoid_focal_loss(x_grad, y, alpha=-1.0, gamma=FL_GAMMA_FOR_GHM).sum().backward()
    fl_grad = x_grad.grad.abs()  # type: ignore[union-attr]
    ghm = GHMC(bins=bins, momentum=0.0)
    weights = ghm.harmonizing_weights(x[:, None], y[:, None], torch.ones_like(y)).view(-1)
    return {
        "bins": bins,
        "edges": [i / bins for i in range(bins + 1)],
        "num_samples": int(g.numel()),
        "distribution": (counts.double() / max(1, g.numel())).tolist(),
        "mean_g": _per_bin_mean(g, index, bins),
        "reweighted": {
            "ce": _per_bin_mean(g, index, bins),
            f"fl_gamma{FL_GAMMA_FOR_GHM:g}": _per_bin_mean(fl_grad, index, bins),
            "ghm_c": _per_bin_mean(g * weights, index, bins),
        },
    }


def ghm_r_gradient_stats(
    box_error: torch.Tensor, mu: float = GHM_R_MU, bins: int = GHM_R_BINS
) -> dict[str, Any]:
    """Where the box-regression gradient goes, by GHM-R's bin of ASL1's gradient norm.

    box_error: (P, 4) predicted minus target deltas of the positives. Per coordinate,
    g = |d| / sqrt(d^2 + mu^2) = |dASL1/dd|. gradient_share: each bin's fraction of the summed
    |dL/dd| under plain ASL1 (g per coordinate) and under GHM-R (g / (count(bin) * n), n the
    non-empty bins; one histogram, no EMA). With mu = 0.02 any |d| above ~0.04 is in the top bin.
    """
    d = box_error.detach().double().reshape(-1)
    g = d.abs() / torch.sqrt(d * d + mu * mu)
    index = (g * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    grad_sums = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, g)
    nonempty = counts > 0
    ghm_r = torch.where(nonempty, grad_sums / (counts.clamp(min=1) * nonempty.sum()), 0.0)
    return {
        "bins": bins,
        "mu": mu,
        "num_coordinates": int(d.numel()),
        "distribution": (counts / max(1, d.numel())).tolist(),
        "gradient_share": {
            "asl1": (grad_sums / grad_sums.sum().clamp(min=1e-300)).tolist(),
            "ghm_r": (ghm_r / ghm_r.sum().clamp(min=1e-300)).tolist(),
        },
    }


def _group_summary(indices: torch.Tensor, ious: torch.Tensor, losses: torch.Tensor) -> dict:
    shown = indices[:MAX_SCATTER_POINTS]
    return {
        "count": int(indices.numel()),
        "mean_iou": float(ious[indices].mean()) if indices.numel() else None,
        "mean_loss": float(losses[indices].mean()) if indices.numel() else None,
        "iou": ious[shown].tolist(),
        "loss": losses[shown].tolist(),
    }


def pisa_sample_groups(
    samples: ValidationSamples, fraction: float = 0.1, seed: int = 0
) -> dict[str, Any]:
    """PISA Figure 4: the same number k of positives picked at random, by top classification
    loss (hard) and by top IoU-HLR (prime: rank 0 first, higher IoU first within a rank)."""
    ious, losses = samples.pos_iou.double(), samples.pos_cls_loss.double()
    num = ious.numel()
    k = max(1, math.ceil(fraction * num)) if num else 0
    rank = iou_hlr_rank(ious.float(), samples.pos_labels, samples.pos_gt_ids)
    prime_order = np.lexsort((-ious.numpy(), rank.numpy()))
    generator = torch.Generator().manual_seed(seed)
    groups = {
        "random": torch.randperm(num, generator=generator)[:k],
        "hard": torch.argsort(losses, descending=True, stable=True)[:k],
        "prime": torch.from_numpy(prime_order[:k].copy()),
    }
    return {
        "num_positives": num,
        "k": k,
        "fraction": fraction,
        "groups": {name: _group_summary(idx, ious, losses) for name, idx in groups.items()},
    }

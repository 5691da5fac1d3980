"""Box regression losses on the positives, per element, so any weighting can be applied after."""

from __future__ import annotations

import torch
from torchvision.ops import generalized_box_iou_loss

from train.model.box_coder import decode_boxes, encode_boxes


def smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float = 0.11) -> torch.Tensor:
    """Elementwise smooth-L1 (Huber / beta); beta=0 is plain L1."""
    diff = (pred - target).abs()
    if beta <= 0:
        return diff
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def asl1(pred: torch.Tensor, target: torch.Tensor, mu: float = 0.02) -> torch.Tensor:
    """GHM's authentic smooth L1: sqrt(d^2 + mu^2) - mu, elementwise."""
    d = pred - target
    return torch.sqrt(d * d + mu * mu) - mu


REG_LOSSES = ("smooth-l1", "l1", "asl1", "giou")


def regression_loss_per_positive(
    kind: str,
    pred_deltas: torch.Tensor,
    gt_boxes: torch.Tensor,
    anchors: torch.Tensor,
    beta: float = 0.11,
    mu: float = 0.02,
) -> torch.Tensor:
    """(P,) loss for P positives: (P, 4) deltas, (P, 4) matched gt boxes, (P, 4) anchors."""
    if kind == "giou":
        pred_boxes = decode_boxes(pred_deltas.float(), anchors)
        return generalized_box_iou_loss(pred_boxes, gt_boxes, reduction="none")
    target = encode_boxes(gt_boxes, anchors)
    if kind == "smooth-l1":
        return smooth_l1(pred_deltas.float(), target, beta).sum(-1)
    if kind == "l1":
        return smooth_l1(pred_deltas.float(), target, 0.0).sum(-1)
    if kind == "asl1":
        return asl1(pred_deltas.float(), target, mu).sum(-1)
    raise ValueError(f"unknown regression loss {kind!r}; valid: {', '.join(REG_LOSSES)}")

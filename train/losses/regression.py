"""Box regression losses on the positives, per element, so any weighting can be applied after."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import generalized_box_iou_loss

from train.assign import AnchorAssignment
from train.losses.base import option, selected_rows
from train.losses.names import REG_LOSS_NAMES
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
    raise ValueError(f"unknown regression loss {kind!r}; valid: {', '.join(REG_LOSS_NAMES)}")


def regression_on_rows(
    kind: str,
    box_deltas: torch.Tensor,
    assignment: AnchorAssignment,
    rows: torch.Tensor,
    mask: torch.Tensor | None,
    beta: float = 0.11,
    mu: float = 0.02,
) -> torch.Tensor:
    """(S,) regression loss of the flat rows `rows` of the (B, N) batch (see `selected_rows`).

    Rows outside `mask` (when given) regress onto their own anchor and get loss 0 with zero
    gradient, so nothing there can be inf or NaN.
    """
    anchors = assignment.anchors.to(torch.float32)[rows % assignment.anchors.shape[0]]
    targets = assignment.gt_boxes.reshape(-1, 4).to(torch.float32)[rows]
    if mask is not None:
        targets = torch.where(mask[:, None], targets, anchors)
    deltas = box_deltas.reshape(-1, 4)[rows]
    loss = regression_loss_per_positive(kind, deltas, targets, anchors, beta, mu)
    return loss if mask is None else torch.where(mask, loss, torch.zeros_like(loss))


def regression_per_anchor(
    kind: str,
    box_deltas: torch.Tensor,
    assignment: AnchorAssignment,
    beta: float = 0.11,
    mu: float = 0.02,
) -> torch.Tensor:
    """(B, N) regression loss of every anchor, zero (with zero gradient) off the positives."""
    rows, mask = selected_rows(assignment.positive.reshape(-1))
    loss = regression_on_rows(kind, box_deltas, assignment, rows, mask, beta, mu)
    flat = loss.new_zeros(assignment.positive.numel()).index_put((rows,), loss)
    return flat.view(assignment.positive.shape)


@dataclass(kw_only=True)
class RegressionOptions:
    """The regression options every detection loss shares (`--reg-loss`, `--loss-opt reg_*`)."""

    reg_loss: str = option(
        "smooth-l1", "box regression loss on positives (deltas, or boxes for giou)", REG_LOSS_NAMES
    )
    reg_beta: float = option(0.11, "smooth-l1 beta (RetinaNet: 0.11)")
    reg_mu: float = option(0.02, "asl1 mu (GHM-R's sqrt(d^2 + mu^2) - mu)")
    reg_weight: float = option(1.0, "weight of the regression part")

    def regression_per_anchor(
        self, box_deltas: torch.Tensor, assignment: AnchorAssignment
    ) -> torch.Tensor:
        """(B, N) loss per anchor with this loss's settings (zero off the positives)."""
        return regression_per_anchor(
            self.reg_loss, box_deltas, assignment, beta=self.reg_beta, mu=self.reg_mu
        )

    def regression_sum(
        self, box_deltas: torch.Tensor, assignment: AnchorAssignment
    ) -> torch.Tensor:
        """Sum of the positives' regression loss (no (B, N) scatter on the CPU path)."""
        rows, mask = selected_rows(assignment.positive.reshape(-1))
        return regression_on_rows(
            self.reg_loss, box_deltas, assignment, rows, mask, self.reg_beta, self.reg_mu
        ).sum()

"""Focal Loss (Lin et al. 2017, arXiv 1708.02002) and its detection wrapper.

FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t); summed over all non-ignored anchors x classes and
divided by the number of positive anchors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from train.assign import AnchorAssignment
from train.losses.base import one_hot_targets, positive_normalizer
from train.losses.regression import regression_loss_per_positive


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be none, mean or sum, not {reduction!r}")


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> torch.Tensor:
    """Elementwise focal loss with torchvision.ops.sigmoid_focal_loss semantics (alpha < 0: off)."""
    logits = logits.float()
    targets = targets.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma if gamma != 0 else ce
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


@dataclass
class FocalDetectionLoss:
    """Focal classification + a regression loss on positives, both / number of positives."""

    alpha: float = 0.25
    gamma: float = 2.0
    reg_loss: str = "smooth-l1"
    reg_beta: float = 0.11
    reg_weight: float = 1.0
    sync_normalizer: bool = True

    def __call__(
        self, cls_logits: torch.Tensor, box_deltas: torch.Tensor, assignment: AnchorAssignment
    ) -> dict[str, torch.Tensor]:
        targets = one_hot_targets(assignment, cls_logits.shape[-1])
        elementwise = sigmoid_focal_loss(cls_logits, targets, self.alpha, self.gamma)
        normalizer = positive_normalizer(assignment, self.sync_normalizer)
        cls = (elementwise * assignment.valid[..., None]).sum() / normalizer
        pos = assignment.positive
        anchors = assignment.anchors.expand(pos.shape[0], -1, -1)[pos]
        reg = regression_loss_per_positive(
            self.reg_loss, box_deltas[pos], assignment.gt_boxes[pos], anchors, beta=self.reg_beta
        )
        return {"cls": cls, "reg": self.reg_weight * reg.sum() / normalizer}

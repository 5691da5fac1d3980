"""Focal Loss and FL* (Lin et al. 2017, arXiv 1708.02002), and the CE baselines built from them.

FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t); summed over all non-ignored anchors x classes and
divided by the number of positive anchors. gamma = 0 gives alpha-balanced CE, and additionally
alpha < 0 gives plain CE: the registry's `ce` and `balanced-ce` are this class with those
settings, so the three share one code path and differ only in numbers.

FL* (the paper's appendix): x_t = y' x, p*_t = sigmoid(gamma x_t + beta), FL* = -log(p*_t) / gamma.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from train.assign import AnchorAssignment
from train.losses.base import check_choices, option, positive_normalizer
from train.losses.fused import SigmoidFamily, sigmoid_row_loss
from train.losses.regression import RegressionOptions


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
    """Elementwise focal loss with torchvision.ops.sigmoid_focal_loss semantics (alpha < 0: off).

    The plain-autograd statement of the formula; the detection losses use the fused
    `sigmoid_row_loss`, which tests hold equal to this.
    """
    logits = logits.float()
    targets = targets.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma if gamma != 0 else ce
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def sigmoid_focal_loss_star(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 4.0,
    beta: float = 0.0,
    reduction: str = "none",
) -> torch.Tensor:
    """Elementwise FL* = -log(sigmoid(gamma x_t + beta)) / gamma with x_t = (2y - 1) x.

    d FL* / dx = y' (p*_t - 1). beta = 0 is fvcore's `sigmoid_focal_loss_star` without alpha.
    """
    if gamma <= 0:
        raise ValueError(f"FL* needs gamma > 0 (it divides by gamma), got {gamma}")
    logits = logits.float()
    targets = targets.float()
    shifted = gamma * logits * (2 * targets - 1) + beta
    return _reduce(F.softplus(-shifted) / gamma, reduction)


@dataclass(kw_only=True)
class SigmoidDetectionLoss(RegressionOptions):
    """Per-anchor sigmoid classification over non-ignored anchors + regression, / positives.

    Subclasses say which elementwise loss (`family`); everything else is RetinaNet's recipe.
    """

    sync_normalizer: bool = option(True, "average the positive count over ranks (DDP)")

    def __post_init__(self) -> None:
        check_choices(self)
        self.family()  # validates the numbers early, with the option names in the message

    def family(self) -> SigmoidFamily:
        raise NotImplementedError

    def classification_rows(
        self, cls_logits: torch.Tensor, assignment: AnchorAssignment
    ) -> torch.Tensor:
        """(B*N,) classification loss of each anchor row, summed over classes."""
        num_classes = cls_logits.shape[-1]
        return sigmoid_row_loss(
            cls_logits.reshape(-1, num_classes), assignment.labels.reshape(-1), self.family()
        )

    def __call__(
        self, cls_logits: torch.Tensor, box_deltas: torch.Tensor, assignment: AnchorAssignment
    ) -> dict[str, torch.Tensor]:
        rows = self.classification_rows(cls_logits, assignment)
        valid = assignment.valid.reshape(-1)
        normalizer = positive_normalizer(assignment, self.sync_normalizer)
        cls = torch.where(valid, rows, torch.zeros_like(rows)).sum() / normalizer
        reg = self.regression_sum(box_deltas, assignment) / normalizer
        return {"cls": cls, "reg": self.reg_weight * reg}


@dataclass(kw_only=True)
class FocalDetectionLoss(SigmoidDetectionLoss):
    """Focal classification + a regression loss on positives, both / number of positives.

    Also the CE baselines: gamma 0 with alpha < 0 is plain CE (the failing baseline under
    RetinaNet's normalization), gamma 0 with alpha >= 0 is alpha-balanced CE.
    """

    alpha: float = option(0.25, "weight of positive targets, 1 - alpha for negatives; < 0: off")
    gamma: float = option(2.0, "focusing exponent on (1 - p_t); 0 gives (alpha-)CE")

    def family(self) -> SigmoidFamily:
        try:
            return SigmoidFamily("focal", alpha=self.alpha, gamma=self.gamma)
        except ValueError as exc:
            raise ValueError(f"alpha={self.alpha}, gamma={self.gamma}: {exc}") from exc


@dataclass(kw_only=True)
class FocalStarDetectionLoss(SigmoidDetectionLoss):
    """FL* classification (no alpha, as in the paper's appendix) + regression, / positives."""

    gamma: float = option(4.0, "FL* slope gamma (> 0): p*_t = sigmoid(gamma x_t + beta)")
    beta: float = option(0.0, "FL* shift beta")

    def family(self) -> SigmoidFamily:
        try:
            return SigmoidFamily("focal-star", gamma=self.gamma, beta=self.beta)
        except ValueError as exc:
            raise ValueError(f"gamma={self.gamma}, beta={self.beta}: {exc}") from exc

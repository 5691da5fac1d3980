"""Hard-sampling baselines: random positive:negative sampling and OHEM, with plain sigmoid CE.

The soft-sampling papers compare against these (Focal Loss paper, Table 1): instead of weighting
all ~100k anchors, each image keeps `num_samples` anchors, at most `pos_fraction` of them
positive (0.25 = 1:3), the rest negatives. `random` picks both at random; `ohem` (Shrivastava et
al. 2016) picks the ones with the highest current loss. Classification is CE over the sampled
anchors only, and both parts are divided by the number of sampled anchors (mmdetection's
convention for sampled heads), averaged over ranks.

Selection is two `topk`s per batch (no loop over images or anchors, no host sync).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from train.assign import AnchorAssignment
from train.losses.base import check_choices, mean_over_ranks, option
from train.losses.fused import SigmoidFamily, sigmoid_row_loss
from train.losses.regression import RegressionOptions

_CE = SigmoidFamily("focal", alpha=-1.0, gamma=0.0)


def sample_anchors(
    keys: torch.Tensor,
    positive: torch.Tensor,
    valid: torch.Tensor,
    num_samples: int,
    pos_fraction: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the anchors with the largest keys: up to num * fraction positives, then negatives.

    keys, positive, valid: (B, N). Returns index (B, S) into N and taken (B, S) bool; slots not
    taken (too few positives or negatives) point at arbitrary anchors and must be masked.
    """
    num_anchors = keys.shape[1]
    k_pos = min(int(num_samples * pos_fraction), num_anchors)
    k_neg = min(num_samples, num_anchors)
    floor = torch.full_like(keys, float("-inf"))
    pos_keys, pos_index = torch.topk(torch.where(positive, keys, floor), k_pos, dim=1)
    pos_taken = pos_keys > float("-inf")
    neg_keys, neg_index = torch.topk(torch.where(valid & ~positive, keys, floor), k_neg, dim=1)
    room = num_samples - pos_taken.sum(dim=1, keepdim=True)
    slot = torch.arange(k_neg, device=keys.device)[None, :]
    neg_taken = (neg_keys > float("-inf")) & (slot < room)
    return torch.cat([pos_index, neg_index], 1), torch.cat([pos_taken, neg_taken], 1)


@dataclass(kw_only=True)
class RandomSamplingLoss(RegressionOptions):
    """CE + regression on `num_samples` randomly drawn anchors per image (1:3 by default)."""

    num_samples: int = option(256, "anchors sampled per image")
    pos_fraction: float = option(0.25, "largest fraction of positives among them (0.25 = 1:3)")
    sync_normalizer: bool = option(True, "average the sampled count over ranks (DDP)")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.num_samples < 1 or not 0 <= self.pos_fraction <= 1:
            raise ValueError(
                f"need num_samples >= 1 and 0 <= pos_fraction <= 1, got "
                f"{self.num_samples}, {self.pos_fraction}"
            )

    def sampling_keys(self, cls_logits: torch.Tensor, assignment: AnchorAssignment) -> torch.Tensor:
        """(B, N) keys; the largest are sampled. Random: uniform noise (torch's global RNG)."""
        return torch.rand(assignment.positive.shape, device=cls_logits.device)

    def __call__(
        self, cls_logits: torch.Tensor, box_deltas: torch.Tensor, assignment: AnchorAssignment
    ) -> dict[str, torch.Tensor]:
        num_classes = cls_logits.shape[-1]
        with torch.no_grad():
            keys = self.sampling_keys(cls_logits, assignment)
        index, taken = sample_anchors(
            keys, assignment.positive, assignment.valid, self.num_samples, self.pos_fraction
        )
        logits = torch.gather(cls_logits, 1, index[..., None].expand(-1, -1, num_classes))
        labels = torch.gather(assignment.labels, 1, index)
        rows = sigmoid_row_loss(logits.reshape(-1, num_classes), labels.reshape(-1), _CE)
        normalizer = mean_over_ranks(taken.sum(), self.sync_normalizer).clamp(min=1.0)
        cls = torch.where(taken.reshape(-1), rows, torch.zeros_like(rows)).sum()
        reg = torch.gather(self.regression_per_anchor(box_deltas, assignment), 1, index)
        reg = torch.where(taken, reg, torch.zeros_like(reg)).sum()
        return {"cls": cls / normalizer, "reg": self.reg_weight * reg / normalizer}


@dataclass(kw_only=True)
class OhemLoss(RandomSamplingLoss):
    """Online hard example mining: the same budget, filled with the highest-CE anchors."""

    def sampling_keys(self, cls_logits: torch.Tensor, assignment: AnchorAssignment) -> torch.Tensor:
        """(B, N) current CE of each anchor (summed over classes), computed without gradient."""
        num_classes = cls_logits.shape[-1]
        rows = sigmoid_row_loss(
            cls_logits.detach().reshape(-1, num_classes), assignment.labels.reshape(-1), _CE
        )
        return rows.view(assignment.positive.shape)

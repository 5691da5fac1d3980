"""The one signature every detection loss has, and the pieces they share.

A detection loss is a callable `(cls_logits, box_deltas, assignment) -> dict[str, Tensor]`:
cls_logits (B, N, C) raw logits, box_deltas (B, N, 4) predicted deltas, assignment the
`AnchorAssignment` of the batch. It returns named scalar parts; the trainer sums them. Keeping the
assignment in the signature lets GHM and PISA see IoUs and object ids without reaching into the head.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist

from train.assign import AnchorAssignment


class DetectionLoss(Protocol):
    def __call__(
        self, cls_logits: torch.Tensor, box_deltas: torch.Tensor, assignment: AnchorAssignment
    ) -> dict[str, torch.Tensor]: ...


def one_hot_targets(assignment: AnchorAssignment, num_classes: int) -> torch.Tensor:
    """(B, N, C) float targets: 1 at each positive's class, 0 elsewhere (negatives all zero)."""
    labels = assignment.labels.clamp(min=0)
    targets = torch.nn.functional.one_hot(labels, num_classes).to(torch.float32)
    return targets * assignment.positive[..., None]


def positive_normalizer(assignment: AnchorAssignment, sync: bool = True) -> torch.Tensor:
    """RetinaNet's normalizer: positives in the batch (averaged over ranks when distributed), >= 1.

    Averaging the global count over ranks keeps each rank's gradient at the scale the
    single-process run with the same global batch would have after DDP averages the gradients.
    """
    count = assignment.positive.sum().to(torch.float32)
    if sync and dist.is_available() and dist.is_initialized():
        count = count.clone()
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=1.0)

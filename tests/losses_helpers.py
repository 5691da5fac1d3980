"""Shared fixtures for the loss tests: a small random but realistic batch (no tests here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from train.assign import AnchorAssignment, assign_anchors
from train.model.anchors import AnchorSpec, generate_anchors
from train.model.box_coder import encode_boxes


@dataclass
class Batch:
    cls_logits: torch.Tensor  # (B, N, C)
    box_deltas: torch.Tensor  # (B, N, 4)
    assignment: AnchorAssignment


def random_boxes(count: int, img_size: int, gen: torch.Generator) -> torch.Tensor:
    """(count, 4) boxes of 12 .. 45% of the image side, inside the image."""
    side = img_size * (0.12 + 0.33 * torch.rand(count, 2, generator=gen))
    corner = (img_size - side) * torch.rand(count, 2, generator=gen)
    return torch.cat([corner, corner + side], dim=1)


def random_batch(
    seed: int = 0,
    batch: int = 2,
    num_classes: int = 4,
    img_size: int = 64,
    objects: tuple[int, ...] = (3, 2),
    logit_scale: float = 2.0,
) -> Batch:
    """Anchors of a `img_size` image, random objects, logits around the prior, deltas near target."""
    gen = torch.Generator().manual_seed(seed)
    anchors = generate_anchors(AnchorSpec(img_size=img_size, anchor_scale=2.0))
    counts = [objects[i % len(objects)] for i in range(batch)]
    boxes = [random_boxes(k, img_size, gen) for k in counts]
    labels = [torch.randint(0, num_classes, (k,), generator=gen) for k in counts]
    assignment = assign_anchors(anchors, boxes, labels)
    n = anchors.shape[0]
    logits = torch.randn(batch, n, num_classes, generator=gen) * logit_scale - 4.0
    target = encode_boxes(assignment.gt_boxes.clamp(min=0), anchors.expand(batch, -1, -1))
    target = torch.where(assignment.positive[..., None], target, torch.zeros_like(target))
    deltas = target + 0.15 * torch.randn(batch, n, 4, generator=gen)
    return Batch(logits, deltas, assignment)

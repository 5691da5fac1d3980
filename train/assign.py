"""Anchor <-> ground-truth matching for a whole batch at once (no loop over images or boxes).

RetinaNet's rule: IoU >= 0.5 positive, < 0.4 negative, in between ignored; every ground-truth box
also claims the anchors it overlaps most (low-quality matches), so small objects are never left
without a positive. Anchors whose area lies mostly inside a crowd box are ignored, never negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import box_iou

POS_IOU = 0.5
NEG_IOU = 0.4
CROWD_IOA = 0.5


@dataclass
class AnchorAssignment:
    """What every loss receives about the anchors of a batch (B images, N anchors).

    labels:        (B, N) long, class index of positives, -1 elsewhere.
    positive:      (B, N) bool.
    valid:         (B, N) bool, False for ignored anchors (IoU in [0.4, 0.5) or inside a crowd).
    gt_boxes:      (B, N, 4) the matched ground-truth box of each anchor (zeros when unmatched).
    gt_ids:        (B, N) long, a batch-unique id of the matched object (-1 when unmatched); two
                   anchors share an id exactly when they match the same object of the same image.
    max_iou:       (B, N) IoU of each anchor with its best ground-truth box.
    anchors:       (N, 4) the anchors themselves.
    """

    labels: torch.Tensor
    positive: torch.Tensor
    valid: torch.Tensor
    gt_boxes: torch.Tensor
    gt_ids: torch.Tensor
    max_iou: torch.Tensor
    anchors: torch.Tensor

    @property
    def num_positives(self) -> torch.Tensor:
        return self.positive.sum()


def pad_targets(
    boxes_per_image: list[torch.Tensor], labels_per_image: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack variable-length targets into (B, K, 4) boxes, (B, K) labels and a (B, K) mask."""
    batch = len(boxes_per_image)
    k_max = max([len(b) for b in boxes_per_image] + [1])
    device = boxes_per_image[0].device if batch else torch.device("cpu")
    boxes = torch.zeros(batch, k_max, 4, device=device)
    labels = torch.full((batch, k_max), -1, dtype=torch.long, device=device)
    mask = torch.zeros(batch, k_max, dtype=torch.bool, device=device)
    for i, (b, lab) in enumerate(zip(boxes_per_image, labels_per_image, strict=True)):
        boxes[i, : len(b)] = b
        labels[i, : len(b)] = lab
        mask[i, : len(b)] = True
    return boxes, labels, mask


def _batched_iou(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B, N, K) IoU between (N, 4) anchors and (B, K, 4) boxes."""
    batch, k_max, _ = boxes.shape
    return box_iou(anchors, boxes.reshape(-1, 4)).reshape(-1, batch, k_max).permute(1, 0, 2)


def _batched_ioa(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B, N, K) fraction of each anchor's area inside each box."""
    lt = torch.maximum(anchors[None, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(anchors[None, :, None, 2:], boxes[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (anchors[:, 2:] - anchors[:, :2]).prod(-1).clamp(min=1e-6)
    return inter / area[None, :, None]


def assign_anchors(
    anchors: torch.Tensor,
    gt_boxes_per_image: list[torch.Tensor],
    gt_labels_per_image: list[torch.Tensor],
    crowd_boxes_per_image: list[torch.Tensor] | None = None,
) -> AnchorAssignment:
    """Match (N, 4) anchors to each image's (K_i, 4) boxes with (K_i,) class indices."""
    gt_boxes, gt_labels, gt_mask = pad_targets(gt_boxes_per_image, gt_labels_per_image)
    batch, k_max = gt_labels.shape
    iou = _batched_iou(anchors, gt_boxes)
    iou = torch.where(gt_mask[:, None, :], iou, torch.full_like(iou, -1.0))
    max_iou, matched = iou.max(dim=2)

    positive = max_iou >= POS_IOU
    # Low-quality matches: each real gt claims the anchors tied at its own best IoU.
    best_per_gt = iou.max(dim=1, keepdim=True).values
    claims = (iou == best_per_gt) & (best_per_gt > 0) & gt_mask[:, None, :]
    has_claim = claims.any(dim=2)
    claimed_gt = claims.float().argmax(dim=2)
    matched = torch.where(has_claim & ~positive, claimed_gt, matched)
    positive = positive | has_claim

    valid = positive | (max_iou < NEG_IOU)
    if crowd_boxes_per_image is not None and any(len(c) for c in crowd_boxes_per_image):
        crowd, _, crowd_mask = pad_targets(
            crowd_boxes_per_image,
            [torch.zeros(len(c), dtype=torch.long) for c in crowd_boxes_per_image],
        )
        ioa = (
            _batched_ioa(anchors, crowd.to(anchors.device))
            * crowd_mask.to(anchors.device)[:, None, :]
        )
        valid = valid & ~((ioa.max(dim=2).values > CROWD_IOA) & ~positive)

    matched_boxes = torch.gather(gt_boxes, 1, matched[..., None].expand(-1, -1, 4))
    matched_labels = torch.gather(gt_labels, 1, matched)
    image_offset = torch.arange(batch, device=anchors.device)[:, None] * k_max
    return AnchorAssignment(
        labels=torch.where(positive, matched_labels, torch.full_like(matched_labels, -1)),
        positive=positive,
        valid=valid,
        gt_boxes=torch.where(positive[..., None], matched_boxes, torch.zeros_like(matched_boxes)),
        gt_ids=torch.where(positive, matched + image_offset, torch.full_like(matched, -1)),
        max_iou=max_iou.clamp(min=0),
        anchors=anchors,
    )

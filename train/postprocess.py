"""RetinaNet post-processing in PyTorch: top-k per level, decode, clip, class-aware NMS, pad.

This is the reference definition of the post-processing. export/graph_postprocess.py builds the
same steps as ONNX nodes, and the parity tests hold the two to the same detections, so a change
here must be mirrored there. Order of operations, per image:

1. per FPN level, the top `K_l = min(topk_per_level, N_l * K)` (anchor, class) pairs by logit
   (TopK on logits picks the same set as TopK on sigmoid scores, sigmoid being monotonic, without
   the ties that saturated float32 sigmoids create);
2. score = sigmoid(logit); pairs with score <= score_threshold are dropped;
3. boxes decoded with the box coder (dw/dh clamped) and clipped to [0, S];
4. class-aware NMS at IoU `nms_iou` over the candidates of all levels together;
5. the `max_detections` highest scores are kept, in decreasing score order, padded with rows of
   box 0, score 0, label -1.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from common.contract import PostprocessConfig
from common.errors import InputError
from train.model.box_coder import decode_boxes


def candidates_per_level(
    anchors_per_level: list[int], num_classes: int, config: PostprocessConfig
) -> list[int]:
    """K_l for each level: how many (anchor, class) pairs its TopK keeps."""
    return [min(config.topk_per_level, n * num_classes) for n in anchors_per_level]


def select_candidates(
    cls_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    anchors: torch.Tensor,
    anchors_per_level: list[int],
    img_size: int,
    config: PostprocessConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-3 for the whole batch at once.

    Args:
        cls_logits: (B, N, K) raw logits, anchors in level-major order.
        box_deltas: (B, N, 4) deltas for the same anchors.
        anchors: (N, 4) xyxy anchors in input pixels.
        anchors_per_level: N_l per level, summing to N.
        img_size: S, the side of the square input; boxes are clipped to [0, S].

    Returns:
        scores (B, M) sigmoid scores (not yet thresholded), labels (B, M) int64 class index,
        boxes (B, M, 4) decoded and clipped, where M = sum of K_l, levels concatenated in order.
    """
    batch, num_anchors, num_classes = cls_logits.shape
    if sum(anchors_per_level) != num_anchors or anchors.shape[0] != num_anchors:
        raise InputError(
            f"anchors_per_level sums to {sum(anchors_per_level)}, anchors has "
            f"{anchors.shape[0]} rows, logits have {num_anchors} anchors: they must agree"
        )
    sizes = candidates_per_level(anchors_per_level, num_classes, config)
    logits_per_level, flat_idx_per_level = [], []
    start = 0
    for count, k in zip(anchors_per_level, sizes, strict=True):
        level = cls_logits[:, start : start + count].reshape(batch, count * num_classes)
        values, idx = level.topk(k, dim=1, largest=True, sorted=True)
        logits_per_level.append(values)
        flat_idx_per_level.append(idx + start * num_classes)  # index into the flat (N * K)
        start += count
    flat_idx = torch.cat(flat_idx_per_level, dim=1)
    anchor_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
    labels = flat_idx - anchor_idx * num_classes
    scores = torch.sigmoid(torch.cat(logits_per_level, dim=1))
    deltas = torch.gather(box_deltas, 1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
    boxes = decode_boxes(deltas, anchors[anchor_idx]).clamp(min=0.0, max=float(img_size))
    return scores, labels, boxes


def count_nms_candidates(
    cls_logits: torch.Tensor, anchors_per_level: list[int], config: PostprocessConfig
) -> torch.Tensor:
    """(B,) int64: per image, the (anchor, class) pairs steps 1-2 pass on to NMS.

    A loss that leaves many low-confidence scores above the threshold makes the deployed
    engine's NMS slower; `pipeline compare` reports this count per loss.
    """
    batch, _, num_classes = cls_logits.shape
    sizes = candidates_per_level(anchors_per_level, num_classes, config)
    counts = torch.zeros(batch, dtype=torch.int64, device=cls_logits.device)
    start = 0
    for count, k in zip(anchors_per_level, sizes, strict=True):
        level = cls_logits[:, start : start + count].reshape(batch, count * num_classes)
        top = level.float().topk(k, dim=1, largest=True, sorted=False).values
        counts += (torch.sigmoid(top) > config.score_threshold).sum(1)
        start += count
    return counts


def postprocess(
    cls_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    anchors: torch.Tensor,
    anchors_per_level: list[int],
    img_size: int,
    config: PostprocessConfig | None = None,
) -> dict[str, torch.Tensor]:
    """Padded detections from raw head outputs; see the module docstring for the steps.

    Inputs are those of `select_candidates` (any float dtype; the math runs in float32).

    Returns:
        num_dets (B,) int64, boxes (B, D, 4) float32 xyxy pixels, scores (B, D) float32,
        labels (B, D) int64, D = config.max_detections; rows past num_dets are box 0, score 0,
        label -1.
    """
    config = config or PostprocessConfig()
    scores, labels, boxes = select_candidates(
        cls_logits.float(), box_deltas.float(), anchors.float(), anchors_per_level, img_size, config
    )
    batch, max_dets = scores.shape[0], config.max_detections
    device = scores.device
    out_boxes = torch.zeros(batch, max_dets, 4, device=device)
    out_scores = torch.zeros(batch, max_dets, device=device)
    out_labels = torch.full((batch, max_dets), -1, dtype=torch.int64, device=device)
    num_dets = torch.zeros(batch, dtype=torch.int64, device=device)
    for b in range(batch):  # NMS output sizes differ per image
        cand = torch.nonzero(scores[b] > config.score_threshold).squeeze(1)
        keep = batched_nms(boxes[b, cand], scores[b, cand], labels[b, cand], config.nms_iou)
        sel = cand[keep[:max_dets]]  # batched_nms returns decreasing score order
        n = sel.numel()
        num_dets[b] = n
        out_boxes[b, :n] = boxes[b, sel]
        out_scores[b, :n] = scores[b, sel]
        out_labels[b, :n] = labels[b, sel]
    return {"num_dets": num_dets, "boxes": out_boxes, "scores": out_scores, "labels": out_labels}

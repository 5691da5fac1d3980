"""Delta box coder (R-CNN style) shared by the loss, the PyTorch predictor and the ONNX graph.

Boxes are (x1, y1, x2, y2) in input-image pixels. Deltas are (dx, dy, dw, dh) with unit weights,
the parameterization RetinaNet uses; dw/dh are clamped before exp so a wild prediction cannot
overflow.
"""

from __future__ import annotations

import math

import torch

DELTA_CLAMP = math.log(1000.0 / 16)


def encode_boxes(gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Deltas that move `anchors` (..., 4) onto `gt_boxes` (..., 4); returns (..., 4)."""
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    gw = (gt_boxes[..., 2] - gt_boxes[..., 0]).clamp(min=1e-3)
    gh = (gt_boxes[..., 3] - gt_boxes[..., 1]).clamp(min=1e-3)
    gx = gt_boxes[..., 0] + 0.5 * gw
    gy = gt_boxes[..., 1] + 0.5 * gh
    return torch.stack(
        [(gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah)], dim=-1
    )


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes (..., 4) from `deltas` (..., 4) applied to `anchors` (..., 4), broadcasting."""
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    dw = deltas[..., 2].clamp(max=DELTA_CLAMP)
    dh = deltas[..., 3].clamp(max=DELTA_CLAMP)
    cx = deltas[..., 0] * aw + ax
    cy = deltas[..., 1] * ah + ay
    half_w = 0.5 * torch.exp(dw) * aw
    half_h = 0.5 * torch.exp(dh) * ah
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)

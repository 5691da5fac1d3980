"""RoIAlign for training on CPU: the same values as torchvision's, a backward that uses every core.

torchvision's CPU `roi_align` backward runs on one thread and took 60% of a Faster R-CNN
training step here (3.0 of 5.0 s for 16 images of 192 px, 512 RoIs each; `grid_sample`, tried
next, parallelizes over images only and was no faster). RoIAlign is a fixed weighted sum of
feature pixels per output bin, so it is computed as one `embedding_bag` with per-sample
weights (its weight gradient is a parallel scatter): for RoI (x1, y1, x2, y2)
scaled to the level, bin size b = max(x2 - x1, 1) / 7, samples at x1 + (j + 0.5) b / s,
j = 0 .. 7s - 1 (s = sampling ratio), no half-pixel offset (torchvision's aligned=False), and
positions clamped to the feature map as roi_align clamps them. RoIs inside the image (every
proposal is clipped to it, every ground-truth box lies in it) give torchvision's values to float
precision; tests/train/test_faster_rcnn.py checks values and gradients against it.

Evaluation and export keep torchvision's op, so the exported graph has ONNX RoiAlign.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _filter_input, _setup_scales


def _taps(coords: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """roi_align's bilinear neighbours along one axis: (low, high, weight of high), with its
    clamping (a position past the last pixel centre takes that pixel)."""
    coords = coords.clamp(min=0.0)
    low = coords.floor().long().clamp(max=size - 1)
    at_edge = low >= size - 1
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coords), coords - low.to(coords.dtype))
    return low, high, frac


def grid_roi_align(
    features: torch.Tensor,
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    spatial_scale: float,
    output_size: int,
    sampling_ratio: int,
) -> torch.Tensor:
    """(R, C, P, P) pooled features of `boxes` (R, 4, input pixels) on `features` (B, C, H, W).

    Each output bin is a weighted sum of 4 s^2 feature pixels (4 bilinear neighbours of each of
    its s x s samples, weights / s^2): one `embedding_bag` over the pixels of the whole batch,
    whose backward scatters the gradient on every core.
    """
    batch, channels, height, width = features.shape
    rois, size, ratio = boxes.shape[0], output_size, sampling_ratio
    steps = size * ratio
    offsets = (torch.arange(steps, device=boxes.device, dtype=torch.float32) + 0.5) / steps
    scaled = boxes.float() * spatial_scale
    start = scaled[:, :2]
    extent = (scaled[:, 2:] - start).clamp(min=1.0)
    y_low, y_high, y_frac = _taps(start[:, 1:] + offsets[None] * extent[:, 1:], height)
    x_low, x_high, x_frac = _taps(start[:, :1] + offsets[None] * extent[:, :1], width)
    base = (image_index.long() * height * width)[:, None, None]
    corners = []
    for rows, row_weight in ((y_low, 1 - y_frac), (y_high, y_frac)):
        for cols, col_weight in ((x_low, 1 - x_frac), (x_high, x_frac)):
            index = base + rows[:, :, None] * width + cols[:, None, :]  # (R, steps, steps)
            corners.append((index, row_weight[:, :, None] * col_weight[:, None, :]))
    # (R, steps, steps, 4) -> per bin (R, P, P, s * s * 4)
    index = torch.stack([c[0] for c in corners], -1)
    weight = torch.stack([c[1] for c in corners], -1) / (ratio * ratio)

    def per_bin(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(rois, size, ratio, size, ratio, 4).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(rois * size * size, ratio * ratio * 4)

    pixels = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    pooled = F.embedding_bag(
        per_bin(index), pixels, per_sample_weights=per_bin(weight).to(pixels.dtype), mode="sum"
    )
    return pooled.reshape(rois, size, size, channels).permute(0, 3, 1, 2)


class TrainingRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign (level by box size), pooled by `grid_roi_align` while
    training with gradients; torchvision's own op otherwise (evaluation, tracing, export)."""

    def forward(
        self,
        x: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()) or torchvision._is_tracing():
            return super().forward(x, boxes, image_shapes)
        levels_in = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                levels_in, image_shapes, self.canonical_scale, self.canonical_level
            )
        levels = self.map_levels(boxes)
        all_boxes = torch.cat(boxes)
        image_index = torch.cat(
            [torch.full((len(b),), i, device=all_boxes.device) for i, b in enumerate(boxes)]
        )
        size = self.output_size[0]
        result = levels_in[0].new_zeros(all_boxes.shape[0], levels_in[0].shape[1], size, size)
        for level, (features, scale) in enumerate(zip(levels_in, self.scales, strict=True)):
            rows = torch.nonzero(levels == level).squeeze(1)
            if rows.numel():
                pooled = grid_roi_align(features, all_boxes[rows], image_index[rows], scale, size,
                                        self.sampling_ratio)  # fmt: skip
                result[rows] = pooled.to(result.dtype)
        return result

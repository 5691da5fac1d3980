"""RetinaNet anchors: 3 scales x 3 aspect ratios per location on FPN levels P3..P7.

The anchor base size is `anchor_scale * stride`; RetinaNet uses 4 for ~800 px COCO images. For the
small square inputs this project trains on, `default_anchor_scale` shrinks it with the image size so
that the smallest objects still get anchors they overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SCALES_PER_OCTAVE = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
ASPECT_RATIOS = (0.5, 1.0, 2.0)
ANCHORS_PER_LOCATION = len(SCALES_PER_OCTAVE) * len(ASPECT_RATIOS)


def default_anchor_scale(img_size: int) -> float:
    """4.0 at COCO's 640+ px, down to 2.0 for small inputs (objects shrink with the image)."""
    return float(min(4.0, max(2.0, 4.0 * img_size / 640)))


@dataclass(frozen=True)
class AnchorSpec:
    img_size: int
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    anchor_scale: float = 4.0

    def feature_sizes(self) -> list[int]:
        """Side of each level's square feature map (ceil division, as strided convs give)."""
        return [-(-self.img_size // s) for s in self.strides]


def cell_anchors(base_size: float) -> torch.Tensor:
    """(A, 4) anchors centred at the origin, ordered ratio-major then scale, as the head expects."""
    rows = []
    for ratio in ASPECT_RATIOS:
        for scale in SCALES_PER_OCTAVE:
            area = (base_size * scale) ** 2
            w = (area / ratio) ** 0.5
            h = w * ratio
            rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(rows, dtype=torch.float32)


def generate_anchors(spec: AnchorSpec) -> torch.Tensor:
    """(N, 4) anchors for all levels, level-major, then row, column, anchor: the head's order."""
    all_levels = []
    for stride, size in zip(spec.strides, spec.feature_sizes(), strict=True):
        base = cell_anchors(spec.anchor_scale * stride)
        shifts_1d = (torch.arange(size, dtype=torch.float32) + 0.5) * stride
        sy, sx = torch.meshgrid(shifts_1d, shifts_1d, indexing="ij")
        shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)
        all_levels.append((shifts + base.reshape(1, -1, 4)).reshape(-1, 4))
    return torch.cat(all_levels)


def anchors_per_level(spec: AnchorSpec) -> list[int]:
    """Number of anchors on each level, for splitting the concatenated (N, ...) tensors."""
    return [s * s * ANCHORS_PER_LOCATION for s in spec.feature_sizes()]

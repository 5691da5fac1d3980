"""RetinaNet's shared heads: one classification and one box tower applied to every FPN level.

The head only predicts; the loss is chosen elsewhere and receives these tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GroupNormNCHW(nn.GroupNorm):
    """GroupNorm computed on a contiguous (NCHW) copy of its input.

    The model runs channels-last, and torch's CPU GroupNorm kernel for channels-last input is
    4x (fp32) to 12x (bf16) slower than for NCHW: in a resnet18 RetinaNet step at 192 px it took
    11% of the time. The copy costs far less. Same parameters as nn.GroupNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous())


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [
            nn.Conv2d(channels, channels, 3, padding=1),
            GroupNormNCHW(min(32, channels // 4), channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class RetinaHead(nn.Module):
    """Per level: (B, C_fpn, H, W) -> cls logits (B, H*W*A, K) and box deltas (B, H*W*A, 4)."""

    def __init__(
        self,
        channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 2,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.cls_tower = _tower(channels, num_convs)
        self.box_tower = _tower(channels, num_convs)
        self.cls_out = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        # Prior-probability init (Focal Loss paper, sec. 4.1): every anchor starts at p = pi.
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior_prob) / prior_prob))

    def _flatten(self, x: torch.Tensor, width: int) -> torch.Tensor:
        batch, _, height, w = x.shape
        x = x.view(batch, self.num_anchors, width, height, w)
        return x.permute(0, 3, 4, 1, 2).reshape(batch, -1, width)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated over levels: (B, N, K) logits and (B, N, 4) deltas, anchor order."""
        cls = [self._flatten(self.cls_out(self.cls_tower(f)), self.num_classes) for f in features]
        box = [self._flatten(self.box_out(self.box_tower(f)), 4) for f in features]
        return torch.cat(cls, dim=1), torch.cat(box, dim=1)

"""The RetinaNet-style detector: normalization, backbone, FPN (P3..P7), shared heads.

`forward` maps raw letterboxed RGB (0..255 float) to per-anchor logits and deltas; decoding and
NMS live in train/postprocess.py (PyTorch) and export/ (ONNX graph), never in the model, so one
forward serves training, evaluation and export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from train.model.anchors import ANCHORS_PER_LOCATION, AnchorSpec, generate_anchors
from train.model.backbone import Backbone
from train.model.head import RetinaHead

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class LastLevelP6P7Fp32(LastLevelP6P7):
    """torchvision's P6/P7 block, run in fp32 when CPU autocast is on.

    With bf16 autocast, channels-last and a 1x1 input (P6 of a <= 64 px image), the stride-2 P7
    conv's weight gradient comes back as garbage (up to 1e38) on torch 2.14's oneDNN CPU path.
    These two convolutions are the cheapest of the network, so fp32 costs nothing measurable.
    Same parameters and names as LastLevelP6P7, so checkpoints and export are unaffected.
    """

    def forward(
        self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]
    ) -> tuple[list[torch.Tensor], list[str]]:
        if not torch.is_autocast_enabled("cpu") or p[-1].device.type != "cpu":
            return super().forward(p, c, names)
        with torch.autocast("cpu", enabled=False):
            return super().forward([*p[:-1], p[-1].float()], [*c[:-1], c[-1].float()], names)


@dataclass
class ModelConfig:
    num_classes: int
    img_size: int = 256
    backbone: str = "resnet18"
    fpn_channels: int = 128
    head_convs: int = 2
    anchor_scale: float = 2.0
    prior_prob: float = 0.01
    detector: str = "retinanet"  # or "faster-rcnn" (train/model/faster_rcnn.py)

    def to_dict(self) -> dict:
        return asdict(self)


class RetinaDetector(nn.Module):
    def __init__(self, config: ModelConfig, pretrained_backbone: Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config.backbone, pretrained_backbone)
        self.fpn = FeaturePyramidNetwork(
            list(self.backbone.out_channels),
            config.fpn_channels,
            extra_blocks=LastLevelP6P7Fp32(config.fpn_channels, config.fpn_channels),
        )
        self.head = RetinaHead(
            config.fpn_channels,
            ANCHORS_PER_LOCATION,
            config.num_classes,
            config.head_convs,
            config.prior_prob,
        )
        self.anchor_spec = AnchorSpec(img_size=config.img_size, anchor_scale=config.anchor_scale)
        self.register_buffer("anchors", generate_anchors(self.anchor_spec), persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) raw RGB 0..255 -> logits (B, N, K), deltas (B, N, 4)."""
        x = (images - self.mean) / self.std
        c3, c4, c5 = self.backbone(x)
        pyramid = self.fpn({"c3": c3, "c4": c4, "c5": c5})
        return self.head(list(pyramid.values()))

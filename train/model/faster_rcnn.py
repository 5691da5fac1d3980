"""The two-stage detector: Faster R-CNN on the same backbone and FPN as the one-stage one.

Built from torchvision's parts, wired for this project's contract (raw 0..255 letterboxed RGB
in, padded detections out) and for a head loss chosen by `--loss`:
- the RPN (torchvision's RegionProposalNetwork: one anchor size per FPN level P3..P7, three
  aspect ratios, IoU 0.7 / 0.3, 256 anchors per image at 1:1, NMS 0.7), its proposals plus the
  ground-truth boxes as the R-CNN head's candidate RoIs in training;
- the R-CNN head: RoIAlign (7 x 7, sampling ratio 2, over P3..P5 by box size, FPN's level rule
  with its 224 px canonical size scaled to the input; training pools with the same values
  through a faster backward, train/model/roi_align.py), two fully connected layers, a softmax
  classifier over K + 1 classes (index K is background) and class-specific box deltas;
- the head's RoIs are matched (IoU >= 0.5 positive, below background) and sampled by the head
  loss (train/rcnn/): random 512 at 1:3, OHEM, or PISA's Score-HLR with ISR-P/ISR-N and CARL.

`forward(images, targets, head_loss)` in training returns the loss parts; `detect(images,
thresholds)` returns padded detections (the same post-processing steps as torchvision's
RoIHeads: per-class boxes, score threshold, class-aware NMS, the best `max_detections`), which
the PyTorch predictor and the ONNX export both call.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import FeaturePyramidNetwork, batched_nms, box_iou

from common.contract import PostprocessConfig
from train.model.anchors import AnchorSpec
from train.model.backbone import Backbone
from train.model.retinanet import IMAGENET_MEAN, IMAGENET_STD, LastLevelP6P7Fp32, ModelConfig
from train.model.roi_align import TrainingRoIAlign

RPN_RATIOS = (0.5, 1.0, 2.0)
ROI_LEVELS = ("c3", "c4", "c5")  # P3..P5, keyed by the FPN's input names
ROI_SIZE = 7
HEAD_WIDTH = 256  # the two fully connected layers (1024 in the paper's ResNet-50 model)
FG_IOU = 0.5  # a head RoI is positive from this IoU with an object, background below it
# torchvision's R-CNN box coder weights (the inverse of mmdetection's target stds 0.1 / 0.2)
RCNN_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
PROPOSALS = {"pre_train": 1000, "post_train": 1000, "pre_test": 600, "post_test": 300}


def roi_canonical_scale(img_size: int) -> int:
    """The RoI size pooled from P4: FPN's 224 px for COCO's 640+ px inputs, shrunk with the
    input as the anchors are (at 192 px every RoI would otherwise pool from P3)."""
    return int(min(224, max(16, round(224 * img_size / 640))))


class FasterRcnnDetector(nn.Module):
    """Faster R-CNN with an FPN; `config.num_classes` foreground classes."""

    two_stage = True

    def __init__(self, config: ModelConfig, pretrained_backbone: Path | None = None) -> None:
        super().__init__()
        self.config = config
        channels = config.fpn_channels
        self.backbone = Backbone(config.backbone, pretrained_backbone)
        self.fpn = FeaturePyramidNetwork(
            list(self.backbone.out_channels),
            channels,
            extra_blocks=LastLevelP6P7Fp32(channels, channels),
        )
        self.anchor_spec = AnchorSpec(img_size=config.img_size, anchor_scale=config.anchor_scale)
        sizes = tuple((round(config.anchor_scale * s),) for s in self.anchor_spec.strides)
        anchors = AnchorGenerator(sizes, (RPN_RATIOS,) * len(sizes))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(channels, len(RPN_RATIOS)),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_top_n={"training": PROPOSALS["pre_train"], "testing": PROPOSALS["pre_test"]},
            post_nms_top_n={"training": PROPOSALS["post_train"], "testing": PROPOSALS["post_test"]},
            nms_thresh=0.7,
        )  # fmt: skip
        self.roi_align = TrainingRoIAlign(
            list(ROI_LEVELS), ROI_SIZE, sampling_ratio=2,
            canonical_scale=roi_canonical_scale(config.img_size),
        )  # fmt: skip
        self.box_head = TwoMLPHead(channels * ROI_SIZE * ROI_SIZE, HEAD_WIDTH)
        self.predictor = FastRCNNPredictor(HEAD_WIDTH, config.num_classes + 1)
        self.box_coder = BoxCoder(RCNN_BOX_WEIGHTS)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # the one-stage detector's anchors buffer tells the trainer its device; kept alike
        self.register_buffer("anchors", torch.zeros(0, 4), persistent=False)

    @property
    def num_classes(self) -> int:
        return int(self.config.num_classes)

    def features(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """(B, 3, S, S) raw RGB 0..255 -> the FPN's levels P3..P7."""
        c3, c4, c5 = self.backbone((images - self.mean) / self.std)
        return self.fpn({"c3": c3, "c4": c4, "c5": c5})

    def _image_list(self, images: torch.Tensor) -> ImageList:
        size = int(self.config.img_size)
        return ImageList(images, [(size, size)] * images.shape[0])

    def head(
        self, features: OrderedDict[str, torch.Tensor], rois: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoIs (per image, xyxy input pixels) -> class logits (R, K + 1), deltas (R, K + 1, 4)."""
        size = int(self.config.img_size)
        levels = OrderedDict((k, features[k]) for k in ROI_LEVELS)
        pooled = self.roi_align(levels, rois, [(size, size)] * len(rois))
        logits, deltas = self.predictor(self.box_head(pooled.float()))
        return logits, deltas.reshape(logits.shape[0], -1, 4)

    def forward(
        self,
        images: torch.Tensor,
        targets: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
        head_loss: Any = None,
    ) -> dict[str, torch.Tensor]:
        """Training: (boxes, labels) per image -> loss parts. Evaluation: `detect`'s output."""
        if not self.training:
            return self.detect(images)
        if targets is None or head_loss is None:
            raise ValueError("training the two-stage detector needs its targets and head loss")
        boxes, labels = targets
        features = self.features(images)
        # the RPN works in float32 (its decode and NMS), whatever autocast runs the convolutions
        rpn_features = OrderedDict((k, v.float()) for k, v in features.items())
        proposals, rpn_losses = self.rpn(
            self._image_list(images), rpn_features, [{"boxes": b} for b in boxes]
        )
        rois = [torch.cat([p.detach(), b]) for p, b in zip(proposals, boxes, strict=True)]
        matched = match_rois(rois, boxes, labels, self.num_classes)
        parts = head_loss(self, features, matched)
        return {
            "rpn_cls": rpn_losses["loss_objectness"],
            "rpn_box": rpn_losses["loss_rpn_box_reg"],
            **parts,
        }

    @torch.no_grad()
    def detect(
        self,
        images: torch.Tensor,
        thresholds: PostprocessConfig | None = None,
        nms_candidates: list[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Padded detections: num_dets (B,), boxes (B, D, 4), scores (B, D), labels (B, D).
        `nms_candidates` gets, per image, the (RoI, class) pairs the final NMS ranks."""
        thresholds = thresholds or PostprocessConfig()
        features = self.features(images)
        rpn_features = OrderedDict((k, v.float()) for k, v in features.items())
        proposals, _ = self.rpn(self._image_list(images), rpn_features)
        logits, deltas = self.head(features, proposals)
        per_image = [p.shape[0] for p in proposals]
        found = [
            self._image_detections(lg, dl, props, thresholds, nms_candidates)
            for lg, dl, props in zip(
                logits.split(per_image), deltas.split(per_image), proposals, strict=True
            )
        ]
        return {
            "num_dets": torch.stack([f[0] for f in found]),
            "boxes": torch.stack([f[1] for f in found]),
            "scores": torch.stack([f[2] for f in found]),
            "labels": torch.stack([f[3] for f in found]),
        }

    def _image_detections(
        self,
        logits: torch.Tensor,
        deltas: torch.Tensor,
        proposals: torch.Tensor,
        thresholds: PostprocessConfig,
        nms_candidates: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image: every (RoI, class) pair above the threshold, class-aware NMS, padded."""
        size, classes = float(self.config.img_size), self.num_classes
        scores = F.softmax(logits.float(), -1)[:, :classes]  # background dropped
        boxes = self.box_coder.decode_single(
            deltas[:, :classes].reshape(-1, 4).float(),
            proposals.repeat_interleave(classes, 0),
        ).clamp(min=0.0, max=size)
        scores, boxes = scores.reshape(-1), boxes.reshape(-1, 4)
        labels = torch.arange(classes, device=scores.device).repeat(proposals.shape[0])
        keep = torch.nonzero(scores > thresholds.score_threshold).squeeze(1)
        widths, heights = boxes[keep, 2] - boxes[keep, 0], boxes[keep, 3] - boxes[keep, 1]
        keep = keep[(widths > 1e-2) & (heights > 1e-2)]
        if nms_candidates is not None:
            nms_candidates.append(int(keep.numel()))
        kept = batched_nms(boxes[keep], scores[keep], labels[keep], thresholds.nms_iou)
        kept = keep[kept[: thresholds.max_detections]]
        return pad_detections(boxes[kept], scores[kept], labels[kept], thresholds.max_detections)


def pad_detections(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, boxes (D, 4), scores (D,), labels (D,)): padding rows box 0, score 0, label -1.
    F.pad with a computed width, so the exported graph pads with the count it found."""
    missing = size - scores.shape[0]
    return (
        torch.ones_like(scores, dtype=torch.int64).sum(),  # a count the trace keeps dynamic
        F.pad(boxes, (0, 0, 0, missing)),
        F.pad(scores, (0, missing)),
        F.pad(labels, (0, missing), value=-1),
    )


class MatchedRois:
    """The head's candidate RoIs of a batch, matched to the objects (all images concatenated).

    rois (R, 4) xyxy, image (R,) image index, labels (R,) class of the matched object or K
    (background), max_iou (R,), gt_boxes (R, 4) the matched object's box (any box for
    background), gt_ids (R,) a batch-unique object id (-1 for background).
    """

    def __init__(
        self,
        rois: torch.Tensor,
        image: torch.Tensor,
        labels: torch.Tensor,
        max_iou: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_ids: torch.Tensor,
        num_classes: int,
    ) -> None:
        self.rois, self.image, self.labels = rois, image, labels
        self.max_iou, self.gt_boxes, self.gt_ids = max_iou, gt_boxes, gt_ids
        self.num_classes = num_classes

    @property
    def positive(self) -> torch.Tensor:
        return self.labels < self.num_classes

    def per_image(self, batch: int) -> list[torch.Tensor]:
        """Row indices of each image's RoIs."""
        return [torch.nonzero(self.image == b).squeeze(1) for b in range(batch)]

    def rois_of(self, index: torch.Tensor, batch: int) -> list[torch.Tensor]:
        """The RoIs at `index`, as the per-image list RoIAlign takes."""
        return [self.rois[index[self.image[index] == b]] for b in range(batch)]


def match_rois(
    rois: list[torch.Tensor],
    boxes: list[torch.Tensor],
    labels: list[torch.Tensor],
    num_classes: int,
) -> MatchedRois:
    """Each RoI's best object by IoU: positive from FG_IOU, background below (no ignored band,
    as in Faster R-CNN's head); images without objects give background only."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("img", "lab", "iou", "box", "id")}
    first_id = 0
    for b, (r, gt, lab) in enumerate(zip(rois, boxes, labels, strict=True)):
        if gt.shape[0]:
            iou, which = box_iou(gt, r).max(0)
        else:
            iou = r.new_zeros(r.shape[0])
            which = torch.zeros(r.shape[0], dtype=torch.int64, device=r.device)
        positive = iou >= FG_IOU
        background = torch.full_like(which, num_classes)
        out["lab"].append(
            torch.where(positive, lab[which] if gt.shape[0] else background, background)
        )
        out["iou"].append(iou)
        out["box"].append(gt[which] if gt.shape[0] else torch.zeros_like(r))
        out["id"].append(torch.where(positive, which + first_id, torch.full_like(which, -1)))
        out["img"].append(torch.full_like(which, b))
        first_id += gt.shape[0]
    return MatchedRois(
        torch.cat(rois), torch.cat(out["img"]), torch.cat(out["lab"]), torch.cat(out["iou"]),
        torch.cat(out["box"]), torch.cat(out["id"]), num_classes,
    )  # fmt: skip

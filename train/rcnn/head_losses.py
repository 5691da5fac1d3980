"""The R-CNN head's sampling and loss, chosen by `--loss` for the two-stage detector.

Every head loss picks, per image, at most `num_samples` of the matched RoIs (proposals plus the
ground-truth boxes), at most `pos_fraction` of them positive, and trains the head on those: a
softmax cross-entropy over K + 1 classes and a smooth-L1 loss (beta 1/9) on the matched class's
deltas of the positives, both divided by the number of sampled RoIs (torchvision's and
mmdetection's convention for sampled heads). What differs is the choice and the weights:
- `random` (Faster R-CNN's standard: 512 RoIs at 1:3) draws both at random;
- `ohem` (Shrivastava et al. 2016) keeps the RoIs with the highest classification loss, scored
  by the head on every candidate without gradient;
- `pisa` (Cao et al. 2020) draws positives at random and ranks negatives by Score-HLR, keeping
  the top-ranked ones with ISR-N weights; the positives' classification loss is re-weighted by
  ISR-P (IoU-HLR of their regressed boxes) and CARL adds a classification-aware regression loss.
The loss sums are kept by ISR-P and ISR-N (only the distribution over samples changes).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from train.losses.base import check_choices, option
from train.losses.pisa import carl_loss
from train.model.faster_rcnn import MatchedRois
from train.rcnn.pisa import (
    isr_n_weights,
    keep_loss_sum,
    max_foreground_probability,
    own_class_boxes,
    rcnn_isr_p_weights,
    regressed_ious,
    score_hlr_sample,
    softmax_class_probability,
)

SMOOTH_L1_BETA = 1 / 9


@dataclass(frozen=True)
class Sample:
    """Sampled rows of a MatchedRois, in image order, with a classification weight each."""

    index: torch.Tensor  # (S,) rows, grouped by image in image order
    weights: torch.Tensor  # (S,) classification loss weights (1 unless ISR-N set them)


@dataclass(frozen=True)
class HeadTerms:
    """What every head loss computes on the sampled RoIs: their labels, number (at least 1),
    per-RoI softmax CE, the positives' positions and their per-RoI smooth-L1 box loss."""

    labels: torch.Tensor
    count: int
    ce: torch.Tensor
    positive: torch.Tensor
    box: torch.Tensor

    @classmethod
    def of(
        cls,
        model: Any,
        matched: MatchedRois,
        sample: Sample,
        logits: torch.Tensor,
        deltas: torch.Tensor,
    ) -> HeadTerms:
        labels = matched.labels[sample.index]
        positive = torch.nonzero(labels < matched.num_classes).squeeze(1)
        # smooth L1 of each positive's deltas for its own class, summed over x, y, w, h
        rows = sample.index[positive]
        targets = model.box_coder.encode_single(matched.gt_boxes[rows], matched.rois[rows])
        predicted = deltas[positive, labels[positive]]
        box = F.smooth_l1_loss(predicted, targets, beta=SMOOTH_L1_BETA, reduction="none").sum(-1)
        ce = F.cross_entropy(logits, labels, reduction="none")
        return cls(labels, max(sample.index.numel(), 1), ce, positive, box)


def sample_counts(positives: int, negatives: int, num: int, fraction: float) -> tuple[int, int]:
    """(positives taken, negatives taken): positives up to num * fraction, negatives fill the rest."""
    taken = min(positives, int(num * fraction))
    return taken, min(negatives, num - taken)


def _random_rows(rows: torch.Tensor, count: int) -> torch.Tensor:
    order = torch.randperm(rows.numel(), device=rows.device)
    return rows[order[:count]]


def _highest_rows(rows: torch.Tensor, keys: torch.Tensor, count: int) -> torch.Tensor:
    return rows[torch.topk(keys[rows], count).indices] if count else rows[:0]


@dataclass
class RandomHeadLoss:
    """Random sampling of the head's RoIs, plain CE + smooth L1."""

    num_samples: int = option(512, "RoIs per image the head trains on")
    pos_fraction: float = option(0.25, "largest share of positives among them (0.25 = 1:3)")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.num_samples < 1 or not 0.0 <= self.pos_fraction <= 1.0:
            raise ValueError("num_samples must be >= 1 and pos_fraction in [0, 1]")

    def pick(
        self, model: Any, features: OrderedDict, matched: MatchedRois, image_rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's (sampled rows, their classification weights)."""
        positive = matched.positive[image_rows]
        pos, neg = image_rows[positive], image_rows[~positive]
        n_pos, n_neg = sample_counts(pos.numel(), neg.numel(), self.num_samples, self.pos_fraction)
        rows = torch.cat([_random_rows(pos, n_pos), _random_rows(neg, n_neg)])
        return rows, torch.ones(rows.numel(), device=rows.device)

    def sample(self, model: Any, features: OrderedDict, matched: MatchedRois) -> Sample:
        batch = int(matched.image.max()) + 1 if matched.image.numel() else 0
        picked = [self.pick(model, features, matched, rows) for rows in matched.per_image(batch)]
        return Sample(torch.cat([p[0] for p in picked]), torch.cat([p[1] for p in picked]))

    def __call__(
        self, model: Any, features: OrderedDict, matched: MatchedRois
    ) -> dict[str, torch.Tensor]:
        batch = int(matched.image.max()) + 1
        sample = self.sample(model, features, matched)
        logits, deltas = model.head(features, matched.rois_of(sample.index, batch))
        return self.head_loss(model, matched, sample, logits.float(), deltas.float())

    def head_loss(
        self,
        model: Any,
        matched: MatchedRois,
        sample: Sample,
        logits: torch.Tensor,
        deltas: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """CE (weighted) and smooth L1 over the sampled RoIs, each / the number sampled."""
        terms = HeadTerms.of(model, matched, sample, logits, deltas)
        return {
            "rcnn_cls": (sample.weights * terms.ce).sum() / terms.count,
            "rcnn_box": terms.box.sum() / terms.count,
        }


def head_scores(
    model: Any, features: OrderedDict, matched: MatchedRois, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's logits and deltas for `rows` of one image, without gradient."""
    image = int(matched.image[rows[0]]) if rows.numel() else 0
    batch = image + 1
    lists = [matched.rois[rows] if b == image else matched.rois[:0] for b in range(batch)]
    with torch.no_grad():
        logits, deltas = model.head(features, lists)
    return logits.float(), deltas.float()


@dataclass
class OhemHeadLoss(RandomHeadLoss):
    """OHEM: the sampled RoIs are the ones the head currently classifies worst."""

    def pick(
        self, model: Any, features: OrderedDict, matched: MatchedRois, image_rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _ = head_scores(model, features, matched, image_rows)
        losses = torch.zeros(matched.labels.numel(), device=logits.device)
        losses[image_rows] = F.cross_entropy(logits, matched.labels[image_rows], reduction="none")
        positive = matched.positive[image_rows]
        pos, neg = image_rows[positive], image_rows[~positive]
        n_pos, n_neg = sample_counts(pos.numel(), neg.numel(), self.num_samples, self.pos_fraction)
        rows = torch.cat([_highest_rows(pos, losses, n_pos), _highest_rows(neg, losses, n_neg)])
        return rows, torch.ones(rows.numel(), device=rows.device)


@dataclass
class PisaHeadLoss(RandomHeadLoss):
    """PISA on the R-CNN head: Score-HLR negatives with ISR-N, ISR-P on positives, CARL.

    Negatives (`negatives`): "score-hlr" is mmdetection's ScoreHLRSampler (the configuration of
    its PISA Faster R-CNN): the head scores every negative RoI of the image, Score-HLR ranks
    those scoring above `score_threshold` (clusters of the boxes regressed for each one's
    predicted class), the best-ranked are kept with ISR-N weights and random low scorers fill
    up. "random" draws negatives as `random` does and gives them ISR-N weights by their rank
    among the drawn, per predicted class (train/rcnn/pisa.py, docs/two-stage-pisa.md).
    """

    negatives: str = option("score-hlr", "how negatives are chosen", ("score-hlr", "random"))
    isr_n_k: float = option(0.5, "ISR-N exponent k (the reference's sampler: 0.5)")
    isr_n_bias: float = option(0.0, "ISR-N bias")
    score_threshold: float = option(0.05, "negatives ranked by Score-HLR score above this")
    cluster_iou: float = option(0.5, "Score-HLR clusters negatives overlapping at this IoU")
    isr_p_k: float = option(2.0, "ISR-P exponent k")
    isr_p_bias: float = option(0.0, "ISR-P bias")
    normalizer: str = option("class", "ISR-P u = (n - r) / n per class (paper) | global M",
                             ("class", "global"))  # fmt: skip
    carl_k: float = option(1.0, "CARL exponent k")
    carl_bias: float = option(0.2, "CARL bias")

    def pick(
        self, model: Any, features: OrderedDict, matched: MatchedRois, image_rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        positive = matched.positive[image_rows]
        pos, neg = image_rows[positive], image_rows[~positive]
        n_pos, n_neg = sample_counts(pos.numel(), neg.numel(), self.num_samples, self.pos_fraction)
        pos = _random_rows(pos, n_pos)
        if self.negatives == "random":
            neg = _random_rows(neg, n_neg)
        if neg.numel() == 0:
            return pos, torch.ones(pos.numel())
        boxes, scores, labels = self._predicted(model, features, matched, neg)
        if self.negatives == "random":
            weights = isr_n_weights(boxes, scores, labels, self.isr_n_k, self.isr_n_bias,
                                    self.cluster_iou)  # fmt: skip
        else:
            chosen, weights = score_hlr_sample(
                boxes, scores, n_neg, self.isr_n_k, self.isr_n_bias, self.cluster_iou,
                self.score_threshold,
            )  # fmt: skip
            neg = neg[chosen]
        return torch.cat([pos, neg]), torch.cat([torch.ones(pos.numel()), weights.float()])

    @staticmethod
    def _predicted(
        model: Any, features: OrderedDict, matched: MatchedRois, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each negative's score, predicted class and the box regressed for that class."""
        logits, deltas = head_scores(model, features, matched, rows)
        scores, labels = max_foreground_probability(logits)
        boxes = model.box_coder.decode_single(own_class_boxes(deltas, labels), matched.rois[rows])
        return boxes, scores, labels

    def head_loss(
        self,
        model: Any,
        matched: MatchedRois,
        sample: Sample,
        logits: torch.Tensor,
        deltas: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """CE with ISR-N (negatives) and ISR-P (positives) weights, both keeping their loss
        sums; smooth L1; CARL on the positives."""
        t = HeadTerms.of(model, matched, sample, logits, deltas)
        negative = torch.nonzero(t.labels == matched.num_classes).squeeze(1)
        weights = sample.weights.to(t.ce.device).clone()
        weights[negative] = keep_loss_sum(weights[negative], t.ce[negative])
        parts = {"rcnn_box": t.box.sum() / t.count, "rcnn_carl": logits.sum() * 0.0}
        if t.positive.numel():
            rows, own = sample.index[t.positive], t.labels[t.positive]
            regressed = model.box_coder.decode_single(
                deltas[t.positive, own].detach(), matched.rois[rows]
            )
            ious = regressed_ious(regressed, own, matched.gt_boxes[rows])
            weights[t.positive] = rcnn_isr_p_weights(
                ious, own, matched.gt_ids[rows], t.ce[t.positive], self.isr_p_k, self.isr_p_bias,
                self.normalizer,
            )  # fmt: skip
            probability = softmax_class_probability(logits[t.positive], own)
            parts["rcnn_carl"] = carl_loss(
                probability, t.box, self.carl_k, self.carl_bias, avg_factor=float(t.count)
            )
        parts["rcnn_cls"] = (weights.detach() * t.ce).sum() / t.count
        return parts

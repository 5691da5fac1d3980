"""The two-stage detector's own parts: RoIAlign for training (against torchvision's op), the
RoI matching, the R-CNN head samplers (hand-worked cases) and the refusal of one-stage losses."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import MultiScaleRoIAlign

from tests.cli_support import invoke
from train.model.faster_rcnn import MatchedRois, match_rois
from train.model.roi_align import TrainingRoIAlign
from train.rcnn.head_losses import (
    OhemHeadLoss,
    PisaHeadLoss,
    RandomHeadLoss,
    Sample,
    sample_counts,
)

LEVELS = ("c3", "c4", "c5")


def _random_boxes(generator: torch.Generator, count: int, size: float) -> torch.Tensor:
    corner = torch.rand(count, 2, generator=generator) * size * 0.8
    extent = torch.rand(count, 2, generator=generator) * size * 0.6 + 0.5
    return torch.cat([corner, (corner + extent).clamp(max=size)], 1)


@pytest.mark.parametrize("canonical_scale", [224, 40])
def test_training_roi_align_gives_torchvision_s_values_and_gradients(canonical_scale: int) -> None:
    """Inside the image (where proposals and objects are), the embedding-bag RoIAlign is
    torchvision's roi_align (aligned=False, sampling ratio 2) to float precision, forward and
    backward, on every level the FPN rule sends RoIs to."""
    generator = torch.Generator().manual_seed(0)
    sizes = {"c3": 24, "c4": 12, "c5": 6}
    features = {
        k: torch.randn(2, 5, n, n, generator=generator, requires_grad=True)
        for k, n in sizes.items()
    }
    boxes = [_random_boxes(generator, 40, 192.0), _random_boxes(generator, 25, 192.0)]
    reference = MultiScaleRoIAlign(list(LEVELS), 7, 2, canonical_scale=canonical_scale)
    ours = TrainingRoIAlign(list(LEVELS), 7, 2, canonical_scale=canonical_scale).train()
    expected = reference(features, boxes, [(192, 192)] * 2)
    found = ours(features, boxes, [(192, 192)] * 2)
    torch.testing.assert_close(found, expected, atol=1e-4, rtol=1e-4)
    upstream = torch.randn(expected.shape, generator=generator)
    grads_expected = torch.autograd.grad((expected * upstream).sum(), list(features.values()),
                                         allow_unused=True)  # fmt: skip
    grads_found = torch.autograd.grad((found * upstream).sum(), list(features.values()),
                                      allow_unused=True)  # fmt: skip
    levels_used = reference.map_levels(boxes).unique().tolist()
    for level, (e, f) in enumerate(zip(grads_expected, grads_found, strict=True)):
        if level in levels_used:
            torch.testing.assert_close(f, e, atol=1e-4, rtol=1e-4)
    if canonical_scale == 40:  # small canonical size: all three levels take RoIs
        assert levels_used == [0, 1, 2]
    ours.eval()  # evaluation and export run torchvision's own op
    assert torch.equal(ours(features, boxes, [(192, 192)] * 2), expected)


def test_match_rois_by_hand() -> None:
    """Object [0, 0, 10, 10] of class 1 in image 0; image 1 has none. K = 3 (background 3).
    RoI [0, 0, 10, 5]: IoU 50/100 = 0.5 -> positive; [0, 0, 10, 4]: 0.4 -> background."""
    rois = [
        torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4], [20, 20, 30, 30]]),
        torch.tensor([[0.0, 0, 10, 10]]),
    ]
    matched = match_rois(rois, [torch.tensor([[0.0, 0, 10, 10]]), torch.zeros(0, 4)],
                         [torch.tensor([1]), torch.zeros(0, dtype=torch.int64)], 3)  # fmt: skip
    assert matched.labels.tolist() == [1, 1, 3, 3, 3]
    assert matched.gt_ids.tolist() == [0, 0, -1, -1, -1]
    assert matched.image.tolist() == [0, 0, 0, 0, 1]
    torch.testing.assert_close(matched.max_iou, torch.tensor([1.0, 0.5, 0.4, 0.0, 0.0]))
    assert matched.positive.tolist() == [True, True, False, False, False]


@pytest.mark.parametrize(
    ("positives", "negatives", "expected"),
    [(10, 1000, (10, 502)), (300, 1000, (128, 384)), (300, 100, (128, 100)), (0, 5, (0, 5))],
)
def test_sample_counts_fill_with_negatives(positives, negatives, expected) -> None:
    """512 at 1:3: at most 128 positives; negatives fill the rest up to what there is."""
    assert sample_counts(positives, negatives, 512, 0.25) == expected


class _KnownHead:
    """A stand-in detector whose head scores RoI i (by its x1 coordinate) with fixed logits."""

    def __init__(self, logits_by_x1: dict[int, list[float]]) -> None:
        self.logits_by_x1 = logits_by_x1
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))

    def head(self, features: OrderedDict, rois: list[torch.Tensor]) -> tuple:
        boxes = torch.cat(rois)
        logits = torch.tensor([self.logits_by_x1[int(b[0])] for b in boxes.tolist()])
        return logits, torch.zeros(boxes.shape[0], logits.shape[1], 4)


def _one_image(labels: list[int], num_classes: int = 2) -> MatchedRois:
    count = len(labels)
    rois = torch.tensor([[float(i), 0.0, i + 10.0, 10.0] for i in range(count)])
    gt_ids = [0 if lab < num_classes else -1 for lab in labels]
    return MatchedRois(rois, torch.zeros(count, dtype=torch.int64), torch.tensor(labels),
                       torch.zeros(count), rois.clone(), torch.tensor(gt_ids), num_classes)  # fmt: skip


def test_ohem_keeps_the_rois_the_head_classifies_worst() -> None:
    """Six RoIs, K = 2: positives 0, 1, 2 (class 0), negatives 3, 4, 5 (background 2). With
    logits [a, 0, 0], CE of class 0 falls with a and CE of background rises with a, so the
    hardest positive has the lowest a and the hardest negative the highest."""
    a = {0: 3.0, 1: -2.0, 2: 0.5, 3: -1.0, 4: 2.5, 5: 1.0}
    head = _KnownHead({i: [v, 0.0, 0.0] for i, v in a.items()})
    matched = _one_image([0, 0, 0, 2, 2, 2])
    loss = OhemHeadLoss(num_samples=4, pos_fraction=0.5)
    rows, weights = loss.pick(head, OrderedDict(), matched, torch.arange(6))
    assert rows.tolist() == [1, 2, 4, 5]  # positives by CE: 1 (a=-2), 2 (0.5); negatives: 4, 5
    assert weights.tolist() == [1.0] * 4


def test_random_sampling_draws_the_counts_from_the_image() -> None:
    torch.manual_seed(0)
    matched = _one_image([0] * 5 + [2] * 20)
    rows, _ = RandomHeadLoss(num_samples=8, pos_fraction=0.25).pick(
        None, OrderedDict(), matched, torch.arange(25)
    )
    assert rows.unique().numel() == 8
    assert (rows[:2] < 5).all() and (rows[2:] >= 5).all()  # 2 positives, then 6 negatives


def test_pisa_head_loss_keeps_the_loss_sums_and_adds_carl() -> None:
    """ISR-P and ISR-N only move weight between samples: rcnn_cls equals the plain CE sum over
    the sampled RoIs / their number whatever the sampler's weights, while it differs from the
    weighted sum had the weights been used as they are."""
    torch.manual_seed(0)
    labels = [0, 1, 0, 2, 2, 2]
    matched = _one_image(labels)
    matched.gt_ids = torch.tensor([0, 1, 0, -1, -1, -1])
    logits = torch.randn(6, 3, requires_grad=True)
    deltas = torch.randn(6, 3, 4) * 0.1
    sample = Sample(torch.arange(6), torch.tensor([1.0, 1.0, 1.0, 3.0, 0.5, 0.25]))
    head = SimpleNamespace(box_coder=BoxCoder((10.0, 10.0, 5.0, 5.0)))
    parts = PisaHeadLoss().head_loss(head, matched, sample, logits, deltas)
    plain = F.cross_entropy(logits, torch.tensor(labels), reduction="sum") / 6
    torch.testing.assert_close(parts["rcnn_cls"], plain)
    weighted = sample.weights * F.cross_entropy(logits, torch.tensor(labels), reduction="none")
    assert abs(float(weighted.sum() / 6 - plain)) > 1e-3
    assert parts["rcnn_carl"].requires_grad and float(parts["rcnn_carl"]) > 0
    parts["rcnn_carl"].backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # CARL reaches the classifier


def test_one_stage_losses_are_refused_by_the_two_stage_detector(tmp_path) -> None:
    result = invoke("train", "--out", tmp_path / "run", "--detector", "faster-rcnn",
                    "--loss", "focal", "--threads", "1")  # fmt: skip
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert lines == [
        "Error: --loss focal: the two-stage detector (--detector faster-rcnn) trains its R-CNN "
        "head with random, ohem, pisa; focal is a one-stage loss (--detector retinanet)"
    ]
    assert not (tmp_path / "run" / "best.pt").exists()


def test_pipeline_losses_lists_the_head_samplers() -> None:
    result = invoke("losses", "--detector", "faster-rcnn", "--json")
    import json

    names = [entry["name"] for entry in json.loads(result.output)]
    assert names == ["random", "ohem", "pisa"]


def test_the_predictor_counts_the_final_nms_candidates_per_image() -> None:
    """What the deployed graph's last NMS ranks: every (RoI, class) pair above the threshold,
    one count per image, never fewer than the detections it returns."""
    import numpy as np

    from train.model.faster_rcnn import FasterRcnnDetector
    from train.model.retinanet import ModelConfig
    from train.predict import TorchPredictor

    torch.manual_seed(0)
    config = ModelConfig(num_classes=3, img_size=64, fpn_channels=16, anchor_scale=2.0,
                         detector="faster-rcnn")  # fmt: skip
    predictor = TorchPredictor(FasterRcnnDetector(config), None, count_candidates=True)
    images = np.random.default_rng(0).uniform(0, 255, (3, 3, 64, 64)).astype(np.float32)
    found = predictor(images)
    assert len(predictor.candidate_counts) == 3
    assert all(c >= n for c, n in zip(predictor.candidate_counts, found.num_dets, strict=True))
    assert sum(predictor.candidate_counts) > 0  # an untrained head scores everything ~1/(K+1)

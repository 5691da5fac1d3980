"""Anchors, box coder, assignment and the head's init, checked against hand-worked values."""

import math

import pytest
import torch

from train.assign import assign_anchors
from train.model.anchors import (
    ANCHORS_PER_LOCATION,
    AnchorSpec,
    anchors_per_level,
    cell_anchors,
    generate_anchors,
)
from train.model.box_coder import decode_boxes, encode_boxes
from train.model.retinanet import ModelConfig, RetinaDetector


def test_encode_hand_worked():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[2.0, 2.0, 12.0, 22.0]])
    # centre (5,5)->(7,12): dx = 2/10, dy = 7/10; size 10x10 -> 10x20: dw = 0, dh = log 2
    expected = torch.tensor([[0.2, 0.7, 0.0, math.log(2.0)]])
    assert torch.allclose(encode_boxes(gt, anchor), expected, atol=1e-6)


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 200
    wh = torch.rand(500, 2, generator=g) * 100 + 2
    boxes = torch.cat([xy, xy + wh], dim=1)
    anchors = torch.cat([xy + 5, xy + 5 + wh.flip(1)], dim=1)
    assert torch.allclose(decode_boxes(encode_boxes(boxes, anchors), anchors), boxes, atol=1e-3)


def test_decode_clamps_huge_sizes():
    anchor = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    boxes = decode_boxes(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), anchor)
    assert torch.isfinite(boxes).all()
    assert boxes[0, 2] - boxes[0, 0] == pytest.approx(1000.0, rel=1e-4)


def test_cell_anchor_areas_and_ratios():
    cells = cell_anchors(32.0)
    widths, heights = cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]
    assert len(cells) == ANCHORS_PER_LOCATION == 9
    assert torch.allclose(
        widths * heights,
        torch.tensor([32.0**2 * s**2 for s in (1, 2 ** (1 / 3), 2 ** (2 / 3))] * 3),
        rtol=1e-5,
    )
    assert torch.allclose(
        heights / widths, torch.tensor([0.5] * 3 + [1.0] * 3 + [2.0] * 3), rtol=1e-5
    )


def test_anchor_grid_layout():
    spec = AnchorSpec(img_size=64, anchor_scale=4.0)
    anchors = generate_anchors(spec)
    assert spec.feature_sizes() == [8, 4, 2, 1, 1]
    assert len(anchors) == sum(anchors_per_level(spec)) == 9 * (64 + 16 + 4 + 1 + 1)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert torch.allclose(centres[0], torch.tensor([4.0, 4.0]))  # first P3 cell centre
    assert torch.allclose(centres[9], torch.tensor([12.0, 4.0]))  # next column, same row


def test_assignment_thresholds_low_quality_crowd_and_ids():
    anchors = torch.tensor(
        [[0, 0, 10, 10], [0, 0, 10, 7.5], [0, 0, 10, 4.5], [50, 50, 60, 60], [100, 100, 110, 110]],
        dtype=torch.float32,
    )
    gt_a = torch.tensor([[0, 0, 10, 10]], dtype=torch.float32)  # IoUs: 1, 0.75, 0.45, 0, 0
    gt_b = torch.tensor(
        [[50, 50, 70, 70], [0, 0, 10, 10]], dtype=torch.float32
    )  # 0.25 for anchor 3
    crowd = [torch.zeros(0, 4), torch.tensor([[98, 98, 112, 112]], dtype=torch.float32)]
    result = assign_anchors(anchors, [gt_a, gt_b], [torch.tensor([2]), torch.tensor([0, 1])], crowd)
    assert result.positive[0].tolist() == [True, True, False, False, False]
    assert result.valid[0].tolist() == [True, True, False, True, True]  # 0.45 is ignored
    # image 1: anchor 3 has IoU 0.25 with gt 0 but is its best anchor -> low-quality positive
    assert result.positive[1].tolist() == [True, True, False, True, False]
    assert result.labels[1].tolist() == [1, 1, -1, 0, -1]
    assert not result.valid[1, 4]  # inside the crowd region: ignored, not a negative
    ids = result.gt_ids
    assert ids[0, 0] == ids[0, 1] and ids[1, 0] != ids[0, 0] and ids[1, 3] != ids[1, 0]
    assert torch.equal(result.gt_boxes[1, 3], gt_b[0])


def test_assignment_image_without_objects():
    anchors = generate_anchors(AnchorSpec(img_size=64))
    result = assign_anchors(anchors, [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)])
    assert not result.positive.any() and result.valid.all()


def test_detector_shapes_and_prior_init():
    model = RetinaDetector(ModelConfig(num_classes=3, img_size=64, fpn_channels=16, head_convs=1))
    logits, deltas = model(torch.rand(2, 3, 64, 64) * 255)
    assert logits.shape == (2, len(model.anchors), 3) and deltas.shape == (2, len(model.anchors), 4)
    assert torch.sigmoid(model.head.cls_out.bias).allclose(torch.tensor(0.01))

"""Anchor assignment at its edges: exact thresholds, claims, crowd regions, ids and padding.

Every expected value is worked by hand from boxes on a 10-pixel grid (IoU = intersection / union
of the rectangles written next to each case), following RetinaNet's rule in train/assign.py's
docstring: IoU >= 0.5 positive, < 0.4 negative, in between ignored, plus each box's best anchors.
"""

from __future__ import annotations

import pytest
import torch

from train.assign import _batched_ioa, assign_anchors, pad_targets


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_iou_exactly_at_the_thresholds() -> None:
    """IoU 0.5 is positive, IoU 0.4 is ignored (not negative): both thresholds are inclusive."""
    anchors = _t(
        [
            [0, 0, 10, 10],  # IoU 50 / 100 = 0.5 with box 0
            [0, 0, 10, 5],  # box 0 itself: its best anchor
            [100, 0, 110, 10],  # IoU 40 / 100 = 0.4 with box 1
            [100, 0, 110, 4],  # box 1 itself
            [200, 200, 210, 210],  # overlaps nothing
        ]
    )
    boxes = _t([[0, 0, 10, 5], [100, 0, 110, 4]])
    result = assign_anchors(anchors, [boxes], [torch.tensor([1, 2])])
    assert result.max_iou[0].tolist() == pytest.approx([0.5, 1.0, 0.4, 1.0, 0.0])
    assert result.positive[0].tolist() == [True, True, False, True, False]
    assert result.valid[0].tolist() == [True, True, False, True, True]
    assert result.labels[0].tolist() == [1, 1, -1, 2, -1]


def test_a_box_overlapping_no_anchor_claims_nothing() -> None:
    """Low-quality matching needs a best IoU above 0: a box touching no anchor makes no positive."""
    anchors = _t([[0, 0, 10, 10], [20, 20, 30, 30]])
    boxes = _t([[0, 0, 10, 10], [500, 500, 510, 510]])
    result = assign_anchors(anchors, [boxes], [torch.tensor([0, 1])])
    assert result.positive[0].tolist() == [True, False]
    assert result.labels[0].tolist() == [0, -1]
    assert result.num_positives.item() == 1


def test_an_iou_positive_keeps_its_best_box_over_a_claim() -> None:
    """Anchor [0,0,10,10]: IoU 0.8 with box 1 = [0,0,10,8], 0.2 with box 0 = [5,0,25,10]
    (50 / 250), and it is box 0's only overlapping anchor. It is positive by IoU, so it stays
    matched to box 1 (label, box and id), not to the box whose claim it also is."""
    anchors = _t([[0, 0, 10, 10], [40, 40, 50, 50]])
    boxes = _t([[5, 0, 25, 10], [0, 0, 10, 8]])
    result = assign_anchors(anchors, [boxes], [torch.tensor([7, 3])])
    assert result.positive[0].tolist() == [True, False]
    assert result.labels[0, 0].item() == 3
    assert result.gt_boxes[0, 0].tolist() == [0, 0, 10, 8]
    assert result.max_iou[0, 0].item() == pytest.approx(0.8)


def test_ids_labels_boxes_and_max_iou_across_a_batch() -> None:
    """Two images with the same two boxes in swapped order: ids tell (image, box) apart."""
    anchors = _t([[0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 10, 7.5], [50, 50, 60, 60]])
    first = _t([[0, 0, 10, 10], [20, 0, 30, 10]])
    second = first.flip(0)
    result = assign_anchors(anchors, [first, second], [torch.tensor([3, 5]), torch.tensor([1, 2])])
    # anchor 2 is [0,0,10,7.5]: IoU 75 / 100 with [0,0,10,10]; anchor 3 overlaps nothing.
    assert result.max_iou.tolist() == [pytest.approx([1, 1, 0.75, 0])] * 2
    assert result.labels.tolist() == [[3, 5, 3, -1], [2, 1, 2, -1]]
    assert result.gt_boxes[1, 0].tolist() == [0, 0, 10, 10]
    assert result.gt_boxes[0, 3].tolist() == [0, 0, 0, 0]  # unmatched: zeros
    ids = result.gt_ids
    assert ids.dtype == torch.long
    assert ids[:, 3].tolist() == [-1, -1]  # unmatched: -1
    # Objects: (image 0, box 0) anchors 0 and 2; (0, 1) anchor 1; (1, 1) anchors 0, 2; (1, 0) 1.
    objects = [ids[0, 0], ids[0, 1], ids[1, 0], ids[1, 1]]
    assert ids[0, 2] == ids[0, 0] and ids[1, 2] == ids[1, 0]
    assert len({int(i) for i in objects}) == 4
    assert all(int(i) >= 0 for i in objects)
    assert result.num_positives.item() == 6


def test_crowd_regions_ignore_anchors_mostly_inside_them() -> None:
    """Image 1 has one crowd box, image 0 two, so image 1's list is padded. An anchor fully
    inside the crowd is ignored; one exactly half inside (IoA 0.5) is still a negative."""
    anchors = _t([[100, 100, 110, 110], [120, 100, 130, 110], [0, 0, 10, 10]])
    boxes = [_t([[0, 0, 10, 10]]), _t([[0, 0, 10, 10]])]
    labels = [torch.tensor([0]), torch.tensor([0])]
    crowd = [
        _t([[300, 300, 310, 310], [400, 400, 410, 410]]),
        _t([[95, 95, 125, 115]]),  # contains anchor 0; covers x 120..125 of anchor 1: IoA 0.5
    ]
    result = assign_anchors(anchors, boxes, labels, crowd)
    assert result.valid.tolist() == [[True, True, True], [False, True, True]]
    assert result.positive.tolist() == [[False, False, True], [False, False, True]]


def test_intersection_over_anchor_area_by_hand() -> None:
    """IoA of anchor [0,0,10,20] (area 200) with crowd [0,0,20,5]: 10 x 5 = 50 -> 0.25; a
    0.5 x 0.5 anchor inside that crowd -> 1; a crowd far away -> 0."""
    anchors = _t([[0, 0, 10, 20], [0, 0, 0.5, 0.5]])
    crowd = _t([[[0, 0, 20, 5], [100, 100, 110, 110]]])
    assert _batched_ioa(anchors, crowd).tolist() == [[pytest.approx([0.25, 0]), [1.0, 0.0]]]


def test_pad_targets_pads_with_label_minus_one_and_a_false_mask() -> None:
    boxes, labels, mask = pad_targets(
        [_t([[0, 0, 1, 1], [2, 2, 3, 3]]), torch.zeros(0, 4)],
        [torch.tensor([4, 6]), torch.zeros(0, dtype=torch.long)],
    )
    assert labels.tolist() == [[4, 6], [-1, -1]]
    assert mask.tolist() == [[True, True], [False, False]]
    assert boxes[1].tolist() == [[0, 0, 0, 0]] * 2


def test_pad_targets_of_an_empty_batch_and_mismatched_lists() -> None:
    boxes, labels, mask = pad_targets([], [])
    assert boxes.shape == (0, 1, 4) and labels.shape == (0, 1) and mask.shape == (0, 1)
    assert boxes.device.type == "cpu"
    with pytest.raises(ValueError):  # one label list for two images: a caller's bug, not padding
        pad_targets([_t([[0, 0, 1, 1]]), _t([[0, 0, 1, 1]])], [torch.tensor([0])])

"""What the losses do by default under DDP and on GPU, checked on one CPU process.

The real two-process check is tests/train/test_losses_distributed.py (slow). Here a fake four-rank
world stands in for torch.distributed: the other three ranks together hold what this rank holds,
so all_reduce doubles a tensor and the mean over ranks is half this rank's value. Every default
that says "average over ranks" must then halve the positive count / bin counts, which the
expected values below compute by hand. A CPU tensor that reports `is_cuda` runs the GPU-only
branches (no host sync) on a machine without a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from tests.losses_helpers import Batch, random_batch
from train.losses import (
    GHMC,
    GHMR,
    FocalDetectionLoss,
    GhmDetectionLoss,
    RandomSamplingLoss,
    positive_normalizer,
    sigmoid_focal_loss,
)
from train.losses.base import mean_over_ranks, selected_rows
from train.losses.ghm import GradientDensity
from train.model.box_coder import encode_boxes


@pytest.fixture
def four_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 4)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, *args, **kwargs: tensor.mul_(2))


class _LooksLikeCuda(torch.Tensor):
    """A CPU tensor that says it is on the GPU, to run the branches that avoid host syncs."""

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True


def test_mean_over_ranks_without_a_process_group_is_the_value_as_float() -> None:
    count = mean_over_ranks(torch.tensor(3))
    assert count.dtype == torch.float32 and count.item() == 3.0
    counts = mean_over_ranks(torch.tensor([2.0, 5.0], dtype=torch.float64))
    assert counts.dtype == torch.float64  # GHM's float64 counts stay float64


def test_mean_over_ranks_averages_by_default(four_ranks: None) -> None:
    value = torch.tensor([6.0, 1.0], dtype=torch.float64)
    mean = mean_over_ranks(value)
    assert mean.tolist() == [3.0, 0.5] and mean.dtype == torch.float64
    assert value.tolist() == [6.0, 1.0]  # the caller's tensor is not reduced in place
    assert mean_over_ranks(torch.tensor(6)).item() == 3.0
    assert mean_over_ranks(torch.tensor(6.0), sync=False).item() == 6.0


def test_positive_normalizer_is_the_rank_mean_at_least_one(four_ranks: None) -> None:
    assignment = random_batch(seed=3).assignment
    positives = int(assignment.positive.sum())
    assert positive_normalizer(assignment).item() == positives / 2
    assert positive_normalizer(assignment, sync=False).item() == positives
    assignment.positive = torch.zeros_like(assignment.positive)
    assignment.positive[0, 0] = True  # one positive: mean 0.5, clamped to 1
    assert positive_normalizer(assignment).item() == 1.0


def _valid_one_hot(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    a = batch.assignment
    targets = torch.zeros_like(batch.cls_logits)
    targets[a.positive, a.labels[a.positive]] = 1
    return targets, a.valid


def test_focal_detection_loss_divides_by_the_rank_mean_count(four_ranks: None) -> None:
    batch = random_batch(seed=21)
    targets, valid = _valid_one_hot(batch)
    focal_sum = (sigmoid_focal_loss(batch.cls_logits, targets) * valid[..., None]).sum()
    half_count = batch.assignment.positive.sum().item() / 2
    parts = FocalDetectionLoss()(batch.cls_logits, batch.box_deltas, batch.assignment)
    assert parts["cls"].item() == pytest.approx(focal_sum.item() / half_count, rel=1e-5)


def _positive_targets(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, 4) predicted deltas and encoded targets of the positives."""
    a = batch.assignment
    anchors = a.anchors.expand(a.positive.shape[0], -1, -1)[a.positive]
    return batch.box_deltas[a.positive], encode_boxes(a.gt_boxes[a.positive], anchors)


def _harmonized_sum(loss: torch.Tensor, g: torch.Tensor, bins: int, scale: float) -> float:
    """sum(loss_i / (count(bin_i) * n)) with counts scaled by `scale` (GHM paper's definition)."""
    index = (g * bins).long().clamp(max=bins - 1)
    counts = torch.bincount(index.reshape(-1), minlength=bins).double() * scale
    nonempty = int((counts > 0).sum())
    return (loss.double() / (counts[index] * nonempty)).sum().item()


def test_ghm_detection_loss_by_hand_with_rank_mean_counts(four_ranks: None) -> None:
    """Defaults: GHM-C 30 bins, GHM-R on ASL1 (mu 0.02, 10 bins, weight 10), counts averaged
    over ranks; the EMA starts at the first counts, so the first call uses them as they are."""
    batch = random_batch(seed=22)
    targets, valid = _valid_one_hot(batch)
    x, t = batch.cls_logits[valid], targets[valid]
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    expected_cls = _harmonized_sum(bce, (torch.sigmoid(x) - t).abs(), 30, 0.5)
    pred, target = _positive_targets(batch)
    d = pred - target
    root = torch.sqrt(d * d + 0.02**2)
    expected_reg = 10 * _harmonized_sum(root - 0.02, d.abs() / root, 10, 0.5)
    parts = GhmDetectionLoss()(batch.cls_logits, batch.box_deltas, batch.assignment)
    assert parts["cls"].item() == pytest.approx(expected_cls, rel=1e-4)
    assert parts["reg"].item() == pytest.approx(expected_reg, rel=1e-4)


def test_ghm_unharmonized_regression_divides_by_the_rank_mean_count(four_ranks: None) -> None:
    batch = random_batch(seed=23)
    pred, target = _positive_targets(batch)
    diff = (pred - target).abs()
    smooth = torch.where(diff < 0.11, 0.5 * diff * diff / 0.11, diff - 0.055).sum()
    half_count = batch.assignment.positive.sum().item() / 2
    loss = GhmDetectionLoss(ghm_r=False, reg_loss="smooth-l1", reg_weight=1.0)
    parts = loss(batch.cls_logits, batch.box_deltas, batch.assignment)
    assert parts["reg"].item() == pytest.approx(smooth.item() / half_count, rel=1e-5)


def test_ghm_modules_average_counts_by_default(four_ranks: None) -> None:
    """One bin holds every element: weight 1 / (count / 2), so the loss is twice the mean."""
    logits = torch.full((6, 2), -5.0)  # p < 1/30: all in bin 0
    targets = torch.zeros(6, 2)
    mean_bce = F.binary_cross_entropy_with_logits(logits, targets).item()
    assert GHMC(momentum=0.0)(logits, targets, torch.ones(6)).item() == pytest.approx(
        2 * mean_bce, rel=1e-5
    )
    d = torch.full((3, 4), 0.005)  # one bin again
    asl1 = (0.005**2 + 0.02**2) ** 0.5 - 0.02
    assert GHMR(momentum=0.0)(d, torch.zeros(3, 4), torch.ones(3)).item() == pytest.approx(
        2 * asl1, rel=1e-5
    )
    index = torch.tensor([0, 1, 1, 2], dtype=torch.int32)  # slot 2 (= bins) is the dump
    assert GradientDensity(bins=2, momentum=0.0).counts(index).tolist() == [[0.5, 1.0]]


def test_sampling_loss_divides_by_the_rank_mean_sampled_count(four_ranks: None) -> None:
    """A budget as large as the image samples every valid anchor: CE sum / (valid count / 2)."""
    batch = random_batch(seed=24)
    targets, valid = _valid_one_hot(batch)
    ce = F.binary_cross_entropy_with_logits(batch.cls_logits, targets, reduction="none")
    ce_sum = (ce * valid[..., None]).sum()
    half_count = valid.sum().item() / 2
    loss = RandomSamplingLoss(num_samples=batch.cls_logits.shape[1], pos_fraction=1.0)
    parts = loss(batch.cls_logits, batch.box_deltas, batch.assignment)
    assert parts["cls"].item() == pytest.approx(ce_sum.item() / half_count, rel=1e-5)


def test_selected_rows_on_gpu_is_every_row_with_the_mask() -> None:
    positive = torch.tensor([False, True, False, True])
    rows, mask = selected_rows(positive)
    assert rows.tolist() == [1, 3] and mask is None
    rows, mask = selected_rows(positive.as_subclass(_LooksLikeCuda))
    assert rows.tolist() == [0, 1, 2, 3]
    assert mask is not None and mask.tolist() == [False, True, False, True]


def test_gradient_counts_gpu_path_counts_like_bincount() -> None:
    density = GradientDensity(bins=3, momentum=0.0, sync=False)
    index = torch.tensor([0, 2, 2, 1, 3, 3], dtype=torch.int32)  # 3 = dump slot, not counted
    assert density.counts(index).tolist() == [[1.0, 1.0, 2.0]]
    assert density.counts(index.as_subclass(_LooksLikeCuda)).tolist() == [[1.0, 1.0, 2.0]]

"""GHM-C / GHM-R: the paper's identities, hand-worked EMA, and parity with the reference loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.losses_helpers import random_batch
from tests.oracles.loss_loops import reference_ghmc, reference_ghmr
from train.losses import GHMC, GHMR, GhmDetectionLoss, anchor_levels, build_loss
from train.model.anchors import AnchorSpec, anchors_per_level, generate_anchors


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_every_g_in_one_bin_gives_mean_ce() -> None:
    """One non-empty bin: weight tot / (tot * 1) = 1 for all, so the loss is the mean BCE."""
    gen = torch.Generator().manual_seed(0)
    logits = -5.0 + 0.3 * torch.rand(50, 4, generator=gen)  # p < 1/30: all in bin 0
    targets = torch.zeros(50, 4)
    label_weights = (torch.arange(50) % 5 != 0).float()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    expected = ce[label_weights > 0].mean()
    assert GHMC(momentum=0.0)(logits, targets, label_weights).item() == pytest.approx(
        expected.item(), rel=1e-5
    )
    # With the EMA started at the first count the first call is the same; from 0 it is 4x.
    first = GHMC(momentum=0.75, ema_init="first")(logits, targets, label_weights)
    zero = GHMC(momentum=0.75, ema_init="zero")(logits, targets, label_weights)
    assert first.item() == pytest.approx(expected.item(), rel=1e-5)
    assert zero.item() == pytest.approx(4 * expected.item(), rel=1e-5)


def test_ghm_weights_sum_to_tot() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 5, generator=gen) * 4
    targets = (torch.rand(200, 5, generator=gen) < 0.1).float()
    label_weights = (torch.rand(200, generator=gen) > 0.2).float()
    weights = GHMC(bins=30, momentum=0.0).harmonizing_weights(logits, targets, label_weights)
    tot = 5 * label_weights.sum()
    assert weights.sum().item() == pytest.approx(tot.item(), rel=1e-5)
    assert (weights[label_weights == 0] == 0).all()


@pytest.mark.parametrize(
    "ema_init,expected",
    [
        # bins [0, .5) and [.5, 1]; counts (3, 1), (2, 0), (0, 4); momentum 0.5.
        # zero:  acc (1.5, .5) -> w = 4 / acc / 2; acc0 = .75 + 1 = 1.75 -> 2 / 1.75;
        #        acc1 = .25 + 2 = 2.25 -> 4 / 2.25.
        ("zero", [(4 / 1.5 / 2, 4 / 0.5 / 2), (2 / 1.75, None), (None, 4 / 2.25)]),
        # first: acc (3, 1) -> 4 / 3 / 2, 4 / 1 / 2; acc0 = 1.5 + 1 = 2.5; acc1 = .5 + 2 = 2.5.
        ("first", [(4 / 3 / 2, 4 / 1 / 2), (2 / 2.5, None), (None, 4 / 2.5)]),
    ],
)
def test_momentum_ema_over_three_calls(ema_init: str, expected: list) -> None:
    ghm = GHMC(bins=2, momentum=0.5, ema_init=ema_init)
    calls = [[0.1, 0.2, 0.3, 0.9], [0.2, 0.4], [0.6, 0.7, 0.8, 0.9]]
    for probs, (w_low, w_high) in zip(calls, expected, strict=True):
        logits = torch.tensor([[_logit(p)] for p in probs])
        targets = torch.zeros_like(logits)
        weights = ghm.harmonizing_weights(logits, targets, torch.ones(len(probs)))[:, 0]
        for p, w in zip(probs, weights.tolist(), strict=True):
            assert w == pytest.approx(w_low if p < 0.5 else w_high, rel=1e-6)


def test_forward_loss_uses_the_same_weights() -> None:
    """loss = sum(BCE * w) / tot with the weights of the same call (EMA state advanced once)."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(100, 3, generator=gen) * 3
    targets = (torch.rand(100, 3, generator=gen) < 0.2).float()
    lw = torch.ones(100)
    a, b = GHMC(momentum=0.75), GHMC(momentum=0.75)
    for _ in range(2):
        weights = a.harmonizing_weights(logits, targets, lw)
        loss = b(logits, targets, lw)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        assert loss.item() == pytest.approx(((bce * weights).sum() / 300).item(), rel=1e-5)


def _levels_setup(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    anchors = generate_anchors(AnchorSpec(img_size=128))
    gen = torch.Generator().manual_seed(seed)
    rows = 2 * anchors.shape[0]
    logits = torch.randn(rows, 5, generator=gen) * 3
    targets = (torch.rand(rows, 5, generator=gen) < 0.05).float()
    label_weights = (torch.rand(rows, generator=gen) > 0.1).float()
    # Rows ordered level-major across the batch, as the reference's per-level calls see them.
    levels = anchor_levels(anchors).repeat(2)
    return logits, targets, label_weights, levels


def test_anchor_levels_match_the_generator() -> None:
    spec = AnchorSpec(img_size=128)
    counts = torch.bincount(anchor_levels(generate_anchors(spec)))
    assert counts.tolist() == anchors_per_level(spec)


@pytest.mark.parametrize(
    "level_mode,momentum", [("global", 0.0), ("global", 0.75), ("reference", 0.75)]
)
def test_ghmc_matches_reference_loops(level_mode: str, momentum: float) -> None:
    logits, targets, lw, levels = _levels_setup(3)
    ours = GHMC(30, momentum, level_mode=level_mode, ema_init="zero", sync=False)
    acc = [0.0] * 30
    for step in range(3):
        x_ours = (logits + 0.4 * step).requires_grad_()
        x_ref = (logits + 0.4 * step).requires_grad_()
        loss = ours(x_ours, targets, lw, levels)
        if level_mode == "global":
            ref = reference_ghmc(x_ref, targets, lw[:, None].expand(-1, 5), acc, 30, momentum)
        else:  # the reference calls the loss once per FPN level, one shared EMA buffer
            parts = [
                reference_ghmc(
                    x_ref[levels == lv],
                    targets[levels == lv],
                    lw[levels == lv, None].expand(-1, 5),
                    acc,
                    30,
                    momentum,
                )
                for lv in range(5)
            ]
            ref = sum(parts)
        loss.backward()
        ref.backward()
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
        assert torch.allclose(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-9)


def test_ghmr_matches_reference_loop_and_asl1_mean() -> None:
    gen = torch.Generator().manual_seed(4)
    pred = torch.randn(300, 4, generator=gen) * 0.2
    target = torch.randn(300, 4, generator=gen) * 0.2
    lw = (torch.rand(300, generator=gen) < 0.3).float()[:, None].expand(-1, 4)
    ours, acc = GHMR(0.02, 10, 0.7, ema_init="zero", sync=False), [0.0] * 10
    for step in range(3):
        p_ours = (pred + 0.05 * step).requires_grad_()
        p_ref = (pred + 0.05 * step).requires_grad_()
        loss, ref = ours(p_ours, target, lw), reference_ghmr(p_ref, target, lw, acc, 0.02, 10, 0.7)
        loss.backward()
        ref.backward()
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
        assert torch.allclose(p_ours.grad, p_ref.grad, rtol=1e-4, atol=1e-9)
    # Equal |d| -> one bin -> tot / (tot * 1) = 1: the mean ASL1 over the valid coordinates.
    same = torch.full((10, 4), 0.005) * torch.tensor([1.0, -1.0, 1.0, -1.0])
    asl1 = math.sqrt(0.005**2 + 0.02**2) - 0.02
    loss = GHMR(momentum=0.0)(same, torch.zeros(10, 4), torch.ones(10))
    assert loss.item() == pytest.approx(asl1, rel=1e-4)


def test_ghm_detection_loss_state_round_trip() -> None:
    batch = random_batch(seed=5)
    args = (batch.cls_logits, batch.box_deltas, batch.assignment)
    first = build_loss("ghm")
    first(*args)
    second = build_loss("ghm")
    second.load_state_dict(first.state_dict())
    a, b = first(*args), second(*args)
    assert a["cls"].item() == pytest.approx(b["cls"].item())
    assert a["reg"].item() == pytest.approx(b["reg"].item())


def test_ghm_r_needs_asl1() -> None:
    with pytest.raises(ValueError, match="asl1"):
        GhmDetectionLoss(reg_loss="smooth-l1")
    batch = random_batch(seed=6)
    parts = GhmDetectionLoss(reg_loss="giou", ghm_r=False, reg_weight=1.0)(
        batch.cls_logits, batch.box_deltas, batch.assignment
    )
    assert torch.isfinite(parts["reg"])


@pytest.mark.parametrize("level_mode", ["global", "per-level", "reference"])
def test_ghm_detection_loss_level_modes_run(level_mode: str) -> None:
    batch = random_batch(seed=7)
    loss = GhmDetectionLoss(level_mode=level_mode)
    logits = batch.cls_logits.requires_grad_()
    parts = loss(logits, batch.box_deltas, batch.assignment)
    sum(parts.values()).backward()
    assert all(torch.isfinite(v) for v in parts.values())
    assert torch.isfinite(logits.grad).all()


def test_ghmc_sum_is_accurate_at_scale() -> None:
    """Millions of elements: the float32 sum must stay pairwise-accurate (a BLAS dot drifts)."""
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(25_000, 80, generator=gen) * 1.5 - 4.6
    targets = torch.zeros_like(logits)
    targets[:200, 3] = 1
    lw = torch.ones(25_000)
    ours = GHMC(momentum=0.0)(logits, targets, lw).item()
    x, t = logits.double(), targets.double()
    index = ((torch.sigmoid(x) - t).abs() * 30).long().clamp(max=29)
    counts = torch.bincount(index.view(-1), minlength=30).double()
    weights = 1.0 / (counts[index] * (counts > 0).sum())
    expected = (F.binary_cross_entropy_with_logits(x, t, reduction="none") * weights).sum().item()
    assert ours == pytest.approx(expected, rel=5e-7)

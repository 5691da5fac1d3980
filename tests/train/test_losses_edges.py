"""Edge cases of the losses, worked by hand: boundary options, exact ties, empty and single
inputs, extreme logits on the GPU-style masked path, EMA state across calls, and the reference
loops (tests/train/test_losses_ghm.py and _pisa.py hold the vectorized code to those loops, so the
loops themselves must be right at the bin edges and at the options the parity tests leave out).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.losses_helpers import random_batch
from tests.oracles.loss_loops import (
    reference_carl,
    reference_ghmc,
    reference_ghmr,
    reference_hlr_rank,
    reference_isr_p,
)
from train.losses import (
    GHMC,
    FocalDetectionLoss,
    OhemLoss,
    PisaCenterDetectionLoss,
    anchor_levels,
    build_loss,
    carl_loss,
    fused,
    ghm,
    iou_hlr_rank,
    isr_p_weights,
    load_loss_state_dict,
    loss_state_dict,
    regression,
    sigmoid_focal_loss,
    sigmoid_focal_loss_star,
)
from train.losses import pisa as pisa_module
from train.losses.fused import SigmoidFamily, sigmoid_row_loss

LN2 = math.log(2)


def _logits(probs: list[float]) -> torch.Tensor:
    return torch.tensor([[math.log(p / (1 - p))] for p in probs])


# --- focal family -------------------------------------------------------------------------


def test_alpha_zero_weights_positives_zero_and_negatives_one() -> None:
    """alpha = 0 is a legal balance (only alpha < 0 turns it off): positives cost nothing."""
    x = torch.zeros(2)
    y = torch.tensor([1.0, 0.0])
    assert sigmoid_focal_loss(x, y, alpha=0.0).tolist() == pytest.approx([0.0, 0.25 * LN2])
    rows = sigmoid_row_loss(torch.zeros(1, 3), torch.tensor([1]), SigmoidFamily(alpha=0.0))
    assert rows.item() == pytest.approx(2 * 0.25 * LN2, rel=1e-6)


@pytest.mark.parametrize(
    "family",
    [SigmoidFamily("focal", 0.25, 1.0), SigmoidFamily("focal-star", gamma=2.0, beta=1.0)],
    ids=["gamma-1", "star-beta-1"],
)
def test_fused_rows_at_unit_gamma_and_beta(family: SigmoidFamily) -> None:
    """gamma = 1 and beta = 1 are ordinary values: the closed forms equal the textbook ones."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(40, 3, generator=gen) * 3).requires_grad_()
    plain_x = x.detach().clone().requires_grad_()
    labels = torch.randint(-1, 3, (40,), generator=gen)
    targets = torch.zeros(40, 3)
    targets[labels >= 0, labels[labels >= 0]] = 1
    fused_rows = sigmoid_row_loss(x, labels, family)
    if family.kind == "focal":
        plain = sigmoid_focal_loss(plain_x, targets, family.alpha, family.gamma).sum(1)
    else:
        plain = sigmoid_focal_loss_star(plain_x, targets, family.gamma, family.beta).sum(1)
    fused_rows.sum().backward()
    plain.sum().backward()
    assert torch.allclose(fused_rows, plain, rtol=1e-5, atol=1e-6)
    assert torch.allclose(x.grad, plain_x.grad, rtol=1e-5, atol=1e-6)


def test_row_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="expected logits"):
        sigmoid_row_loss(torch.zeros(10, 3), torch.zeros(9, dtype=torch.long), SigmoidFamily())
    with pytest.raises(ValueError, match="expected logits"):
        sigmoid_row_loss(torch.zeros(10), torch.zeros(10, dtype=torch.long), SigmoidFamily())


@pytest.mark.parametrize("name", ["focal", "pisa"])
def test_masked_path_stays_finite_with_saturated_negative_rows(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On GPU every row goes through the per-positive code, masked. A negative row whose logits
    are all -200 has loss exactly 0, one whose class-0 logit is +200 has a positive-target loss
    of exactly 0: masking must not turn either into 0 / 0 = NaN."""
    batch = random_batch(seed=15)
    negatives = (~batch.assignment.positive & batch.assignment.valid).nonzero()
    (b0, n0), (b1, n1) = negatives[0].tolist(), negatives[1].tolist()
    logits = batch.cls_logits.clone()
    logits[b0, n0] = -200.0
    logits[b1, n1, 0] = 200.0
    results = []
    for gpu_style in (False, True):
        if gpu_style:
            for module in (fused, regression, ghm, pisa_module):
                monkeypatch.setattr(module, "selected_rows", lambda p: (torch.arange(p.numel()), p))
        parts = build_loss(name)(logits, batch.box_deltas, batch.assignment)
        results.append({k: v.item() for k, v in parts.items()})
    assert all(math.isfinite(v) for v in results[1].values())
    assert results[1] == pytest.approx(results[0], rel=1e-5)


# --- GHM ------------------------------------------------------------------------------------


def test_anchor_levels_are_octaves_clamped_to_eight_levels() -> None:
    """Square anchors of side 0.25 * 2^k, k = 0 .. 9: level k, the last two clamped to 7.
    Sub-pixel anchors count too (their area is below 1)."""
    sides = [0.25 * 2**k for k in range(10)]
    anchors = torch.tensor([[0.0, 0.0, s, s] for s in sides])
    assert anchor_levels(anchors).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 7, 7]


def test_level_ids_beyond_the_last_level_count_as_the_last() -> None:
    """Per-level histograms: level id 9 is clamped to 7, so it gets its own level's weight
    tot / (count * n) = 1 / (1 * 1) = 1, like level 7 itself."""
    ghmc = GHMC(bins=2, momentum=0.0, level_mode="per-level")
    logits = _logits([0.1, 0.2, 0.3])  # all in bin 0 of 2
    levels = torch.tensor([0, 0, 9])
    weights = ghmc.harmonizing_weights(logits, torch.zeros(3, 1), torch.ones(3), levels)
    assert weights[:, 0].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_one_counted_element_gets_weight_one() -> None:
    """tot = 1 valid element, count 1, one non-empty bin: weight 1 (ignored rows weigh 0)."""
    ghmc = GHMC(bins=4, momentum=0.0)
    weights = ghmc.harmonizing_weights(
        _logits([0.3, 0.6]), torch.zeros(2, 1), torch.tensor([1.0, 0.0])
    )
    assert weights[:, 0].tolist() == [1.0, 0.0]


def test_momentum_zero_keeps_no_ema_state() -> None:
    """Momentum 0 means "this batch only": no state is carried, ours or the reference's."""
    ghmc = GHMC(bins=2, momentum=0.0)
    ghmc(_logits([0.1, 0.7]), torch.zeros(2, 1), torch.ones(2))
    assert ghmc.density.acc_sum.abs().sum().item() == 0.0
    acc = [0.0, 0.0]
    reference_ghmc(
        _logits([0.1, 0.7]), torch.zeros(2, 1), torch.ones(2, 1), acc, bins=2, momentum=0.0
    )
    assert acc == [0.0, 0.0]


@pytest.mark.parametrize("level_mode", ["global", "per-level"])
def test_saved_ema_state_restores_into_a_fresh_loss(level_mode: str) -> None:
    """Resume: a fresh loss loading the saved state continues exactly as the trained one; one
    that does not differs (the state must matter for the check to mean anything)."""
    first, second = random_batch(seed=16), random_batch(seed=17)
    trained = build_loss("ghm", {"level_mode": level_mode})
    trained(first.cls_logits, first.box_deltas, first.assignment)
    resumed = build_loss("ghm", {"level_mode": level_mode})
    load_loss_state_dict(resumed, loss_state_dict(trained))
    args = (second.cls_logits, second.box_deltas, second.assignment)
    expected = {k: v.item() for k, v in trained(*args).items()}
    assert {k: v.item() for k, v in resumed(*args).items()} == pytest.approx(expected, rel=1e-6)
    fresh = {k: v.item() for k, v in build_loss("ghm", {"level_mode": level_mode})(*args).items()}
    assert fresh["cls"] != pytest.approx(expected["cls"], rel=1e-3)
    assert fresh["reg"] != pytest.approx(expected["reg"], rel=1e-3)


def test_stateless_losses_save_nothing_and_refuse_state() -> None:
    loss = FocalDetectionLoss()
    assert loss_state_dict(loss) == {}
    load_loss_state_dict(loss, {})
    with pytest.raises(ValueError, match="keeps no state"):
        load_loss_state_dict(loss, {"ghm_c": {}})


# --- PISA -----------------------------------------------------------------------------------


def test_equal_ious_rank_in_input_order() -> None:
    """40 samples of one class with equal IoU: ranks follow input order, with or without a
    priority (all equal) and whether they are 40 objects or one."""
    ious = torch.full((40,), 0.6)
    labels = torch.zeros(40, dtype=torch.long)
    for gt_ids in (torch.arange(40), torch.zeros(40, dtype=torch.long)):
        assert iou_hlr_rank(ious, labels, gt_ids).tolist() == list(range(40))
        priority = torch.zeros(40, dtype=torch.bool)
        assert iou_hlr_rank(ious, labels, gt_ids, priority=priority).tolist() == list(range(40))
        assert reference_hlr_rank(ious, labels, gt_ids).tolist() == list(range(40))


def test_masked_rows_do_not_mix_with_class_or_object_62() -> None:
    """Masked-out rows get a stand-in class and object id that no real one may share (COCO has
    80 classes): real rows of class 62 / object 62 rank as in the compact call."""
    ious = torch.tensor([0.9, 0.95, 0.5, 0.8, 0.7, 0.6])
    labels = torch.tensor([62, 0, 62, 62, 1, 62])
    gt_ids = torch.tensor([62, 5, 62, 62, 6, 62])
    mask = torch.tensor([True, False, True, False, True, True])
    ranks = iou_hlr_rank(ious, labels, gt_ids, mask=mask)
    # compact: class 62 object 62 has IoUs .9, .5, .6 -> ranks 0, 2, 1; class 1 alone -> 0.
    assert ranks[mask].tolist() == [0, 2, 0, 1]
    weights = isr_p_weights(ious, labels, gt_ids, mask=mask)
    assert weights[mask].tolist() == pytest.approx([1.0, 1 / 9, 1.0, 4 / 9], rel=1e-6)


def test_isr_of_no_positives_and_of_one() -> None:
    empty = torch.zeros(0, dtype=torch.long)
    for normalizer in ("class", "global"):
        none = isr_p_weights(torch.zeros(0), empty, empty, normalizer=normalizer)
        assert none.shape == (0,) and none.dtype == torch.float32
        one = isr_p_weights(
            torch.tensor([0.7]), torch.tensor([3]), torch.tensor([0]), normalizer=normalizer
        )
        assert one.tolist() == [1.0]


def test_carl_of_a_single_low_score_positive() -> None:
    """One positive: c = v / mean(v) = 1 whatever its score, and the default avg is 1."""
    loss = carl_loss(torch.tensor([0.0]), torch.tensor([0.3]))
    assert loss.item() == pytest.approx(0.3, rel=1e-6)


def test_carl_rescale_keeps_small_loss_values() -> None:
    """c' = c * sum(L) / sum(c L): the value is sum(L) / P also when sum(c L) is far below 1."""
    scores = torch.tensor([0.1, 0.9])
    reg = torch.tensor([0.002, 0.001])
    assert carl_loss(scores, reg, rescale=True).item() == pytest.approx(0.003 / 2, rel=1e-5)


def test_pisa_center_edges_count_as_inside() -> None:
    """gt [0,0,100,10]: centre (50, 5) inside; centre (100, 10) on the corner is inside (edges
    inclusive); centre (60, 12) is below it; (105, 5) is right of it (though 105 > 10 = y2)."""
    gt = torch.tensor([[0.0, 0.0, 100.0, 10.0]] * 4)
    centres = torch.tensor([[50.0, 5.0], [100.0, 10.0], [60.0, 12.0], [105.0, 5.0]])
    anchors = torch.cat([centres - 2, centres + 2], dim=1)
    pos = pisa_module._Positives(
        rows=torch.arange(4), mask=None, labels=torch.zeros(4, dtype=torch.long),
        gt_ids=torch.zeros(4, dtype=torch.long), anchors=anchors, gt_boxes=gt,
    )  # fmt: skip
    keys, inside = PisaCenterDetectionLoss()._ranking_keys(torch.full((4,), 0.5), pos)
    assert inside is not None and inside.tolist() == [True, True, False, False]
    assert keys.tolist() == pytest.approx([0.55, 0.55, 0.5, 0.5])


# --- sampling -------------------------------------------------------------------------------


def test_ohem_budget_of_one_takes_the_hardest_negative() -> None:
    """num_samples 1, no positives: the valid negative of highest CE (summed over classes),
    divided by the one sampled anchor, per image, summed over the batch."""
    batch = random_batch(seed=18, batch=1)
    a = batch.assignment
    ce = F.binary_cross_entropy_with_logits(
        batch.cls_logits, torch.zeros_like(batch.cls_logits), reduction="none"
    ).sum(-1)
    hardest = ce[a.valid & ~a.positive].max().item()
    parts = OhemLoss(num_samples=1, pos_fraction=0.0)(batch.cls_logits, batch.box_deltas, a)
    assert parts["cls"].item() == pytest.approx(hardest, rel=1e-5)
    assert parts["reg"].item() == 0.0


# --- reference loops --------------------------------------------------------------------------


def test_reference_ghmc_bins_at_edges_and_defaults() -> None:
    """Default 30 bins: p .5 gives g = .5 exactly, the lower edge of bin 15 (not 14, not both);
    p = 1 (logit 100) gives g = 1, inside the last bin (edge 1 + 1e-6). Four bins of one:
    w = tot / (1 * 4) = 1, so the loss is the mean BCE. Second call, momentum 0.75: bin 15's
    EMA is .75 * .25 + .25 = .4375 (the reference starts at 0), n = 1, tot = 1."""
    logits = torch.tensor([[0.0], [100.0], [-3.0], [-1.0]])
    targets = torch.zeros(4, 1)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    acc = [0.0] * 30
    loss = reference_ghmc(logits, targets, torch.ones(4, 1), acc)
    ema = [0.25 * 1] * 4  # each bin: .75 * 0 + .25 * 1
    assert loss.item() == pytest.approx((bce.sum() / 4 / 0.25).item(), rel=1e-6)
    assert sorted(i for i, v in enumerate(acc) if v) == [1, 8, 15, 29]
    assert [acc[i] for i in (1, 8, 15, 29)] == pytest.approx(ema)
    again = reference_ghmc(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), acc)
    assert again.item() == pytest.approx(LN2 / 0.4375, rel=1e-6)


def test_reference_ghm_with_one_or_no_valid_element() -> None:
    """tot is at least 1; with no valid element there is no weight and no NaN."""
    logits = _logits([0.3, 0.6])
    one = reference_ghmc(logits, torch.zeros(2, 1), torch.tensor([[1.0], [0.0]]), [0.0] * 2, 2, 0.0)
    assert one.item() == pytest.approx(-math.log(0.7), rel=1e-6)  # w = 1 / (1 * 1) * 1, / 1
    none = reference_ghmc(logits, torch.zeros(2, 1), torch.zeros(2, 1), [0.0] * 2, 2, 0.0)
    assert none.item() == 0.0
    d = torch.tensor([[0.01, 0.0, 0.0, 0.0]])
    lw = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    r = reference_ghmr(d, torch.zeros(1, 4), lw, [0.0] * 10, momentum=0.0)
    assert r.item() == pytest.approx(math.sqrt(0.0001 + 0.0004) - 0.02, rel=1e-5)


def test_reference_ghmr_defaults() -> None:
    """mu .02, 10 bins, momentum .7 from 0: d .002 -> g .0995 (bin 0), d .0022 -> g .1093
    (bin 1); acc .3 each, w = tot / (.3 * 2) = 2 / .6, loss = sum(ASL1 * w) / tot."""
    d = torch.tensor([[0.002], [0.0022]])
    acc = [0.0] * 10
    loss = reference_ghmr(d, torch.zeros(2, 1), torch.ones(2, 1), acc)
    asl = [math.sqrt(v * v + 0.0004) - 0.02 for v in (0.002, 0.0022)]
    assert loss.item() == pytest.approx(sum(asl) / 0.6, rel=1e-4)
    assert acc[:2] == pytest.approx([0.3, 0.3]) and sum(acc[2:]) == 0


def test_reference_isr_p_with_bias_and_odd_exponent() -> None:
    """One class, one object, IoUs .9 .5 .7: ranks 0 2 1, M = 3, w = (.3 + .7 (3 - r) / 3)^1.5,
    rescaled so sum(w * loss) = sum(loss)."""
    ious = torch.tensor([0.9, 0.5, 0.7])
    zeros = torch.zeros(3, dtype=torch.long)
    row_loss = torch.tensor([1.0, 2.0, 3.0])
    raw = [(0.3 + 0.7 * (3 - r) / 3) ** 1.5 for r in (0, 2, 1)]
    scale = 6.0 / sum(w * v for w, v in zip(raw, [1.0, 2.0, 3.0], strict=True))
    weights = reference_isr_p(ious, zeros, zeros, row_loss, k=1.5, bias=0.3)
    assert weights.tolist() == pytest.approx([w * scale for w in raw], rel=1e-5)
    ours = isr_p_weights(ious, zeros, zeros, k=1.5, bias=0.3, normalizer="global")
    assert ours.tolist() == pytest.approx(raw, rel=1e-5)


def test_reference_carl_takes_per_sample_losses() -> None:
    """(P,) losses as given: v = .2 + .8 p = (.6, 1.0), c = v / mean(v) = (.75, 1.25)."""
    loss = reference_carl(torch.tensor([0.5, 1.0]), torch.tensor([0.4, 0.2]))
    assert loss.item() == pytest.approx((0.75 * 0.4 + 1.25 * 0.2) / 2, rel=1e-6)

"""Loss options as callers see them: keyword-only, immutable where shared, validated early,
listed by `describe_losses`, and the documented defaults of the library functions.

Defaults are checked by value: each call below leaves the option out and compares with the
formula evaluated at the documented default (train/losses/README.md, the modules' docstrings).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from train.assign import AnchorAssignment, assign_anchors
from train.losses import (
    GHMC,
    GHMR,
    LOSSES,
    REG_LOSS_NAMES,
    FocalDetectionLoss,
    FocalStarDetectionLoss,
    GhmDetectionLoss,
    PisaCenterDetectionLoss,
    PisaDetectionLoss,
    RandomSamplingLoss,
    asl1,
    describe_losses,
    isr_p_weights,
    resolve_options,
    sigmoid_focal_loss_star,
    smooth_l1,
)
from train.losses.fused import SigmoidFamily, sigmoid_row_loss
from train.losses.ghm import GradientDensity
from train.losses.regression import (
    RegressionOptions,
    regression_loss_per_positive,
    regression_on_rows,
    regression_per_anchor,
)
from train.model.box_coder import encode_boxes

LN2 = math.log(2)


@pytest.mark.parametrize(
    "cls,first_value",
    [
        (RegressionOptions, "smooth-l1"),
        (FocalDetectionLoss, True),
        (FocalStarDetectionLoss, 4.0),
        (GhmDetectionLoss, 30),
        (PisaDetectionLoss, 2.0),
        (PisaCenterDetectionLoss, 0.05),
        (RandomSamplingLoss, 256),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "value",
)
def test_loss_options_are_keyword_only(cls: type, first_value: object) -> None:
    """Options are passed by name (registry, CLI); a positional value would silently bind to
    whichever field happens to come first, which changes whenever a field is added."""
    with pytest.raises(TypeError):
        cls(first_value)


def test_shared_loss_descriptions_are_immutable() -> None:
    """SigmoidFamily is shared (the sampling losses' module-level CE) and LossSpec is the
    registry's table: assigning to either must fail instead of changing every user."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        SigmoidFamily().gamma = 0.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        LOSSES["ghm"].grad_clip = None  # type: ignore[misc]


def test_sigmoid_family_defaults_are_the_papers_focal_loss() -> None:
    """alpha .25, gamma 2 (focal) and beta 0 (FL*): at x = 0 (p = 0.5) a positive element costs
    .25 * .5^2 * ln 2, a negative .75 * .5^2 * ln 2; FL* at gamma 2 costs ln(2) / 2."""
    labels = torch.tensor([0, -1])
    rows = sigmoid_row_loss(torch.zeros(2, 3), labels, SigmoidFamily())
    assert rows.tolist() == pytest.approx([(0.0625 + 2 * 0.1875) * LN2, 3 * 0.1875 * LN2], rel=1e-6)
    star = sigmoid_row_loss(torch.zeros(1, 2), torch.tensor([-1]), SigmoidFamily("focal-star"))
    assert star.item() == pytest.approx(2 * LN2 / 2, rel=1e-6)
    star = sigmoid_row_loss(
        torch.zeros(1, 1), torch.tensor([-1]), SigmoidFamily("focal-star", gamma=4.0)
    )
    assert star.item() == pytest.approx(LN2 / 4, rel=1e-6)  # beta 0: softplus(0) / gamma


def test_fl_star_defaults_gamma_four_beta_zero() -> None:
    """-log(sigmoid(4 x_t)) / 4 with x_t = (2y - 1) x."""
    x = torch.tensor([0.5, -0.25])
    y = torch.tensor([1.0, 0.0])
    expected = [-math.log(1 / (1 + math.exp(-4 * 0.5))) / 4, -math.log(1 / (1 + math.exp(-1))) / 4]
    assert sigmoid_focal_loss_star(x, y).tolist() == pytest.approx(expected, rel=1e-6)


def test_fl_star_takes_soft_targets_by_its_formula() -> None:
    """x_t = (2y - 1) x for any y in [0, 1]: y = 0.75 halves the logit, y = 0.5 zeroes it."""
    x = torch.tensor([2.0, 2.0])
    y = torch.tensor([0.75, 0.5])
    expected = [math.log1p(math.exp(-2 * 1.0)) / 2, math.log(2) / 2]
    assert sigmoid_focal_loss_star(x, y, gamma=2.0).tolist() == pytest.approx(expected, rel=1e-6)


def test_regression_defaults_beta_0_11_and_mu_0_02() -> None:
    """|d| = 0.05 < beta: smooth-L1 0.5 d^2 / 0.11; ASL1 sqrt(d^2 + 0.02^2) - 0.02."""
    d = torch.tensor([0.05, -0.3])
    smooth = [0.5 * 0.05**2 / 0.11, 0.3 - 0.055]
    asl = [math.sqrt(v * v + 0.0004) - 0.02 for v in (0.05, 0.3)]
    assert smooth_l1(d, torch.zeros(2)).tolist() == pytest.approx(smooth, rel=1e-5)
    assert asl1(d, torch.zeros(2)).tolist() == pytest.approx(asl, rel=1e-5)


def _one_positive() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AnchorAssignment]:
    """Anchor [0,0,10,10], gt [0,0,10,10] (target deltas 0), predicted deltas (0.05, 0, 0, -0.3)."""
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 50.0, 50.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assignment = assign_anchors(anchors, [gt], [torch.tensor([0])])
    deltas = torch.zeros(1, 2, 4)
    deltas[0, 0] = torch.tensor([0.05, 0.0, 0.0, -0.3])
    return deltas, gt, anchors[:1], assignment


def test_regression_helpers_default_to_beta_0_11_and_mu_0_02() -> None:
    deltas, gt, anchor, assignment = _one_positive()
    assert encode_boxes(gt, anchor).abs().max().item() == 0.0
    smooth = 0.5 * 0.05**2 / 0.11 + 0.3 - 0.055
    asl = sum(math.sqrt(v * v + 0.0004) - 0.02 for v in (0.05, 0.0, 0.0, 0.3))
    rows = torch.tensor([0])
    for kind, expected in (("smooth-l1", smooth), ("asl1", asl)):
        one = regression_loss_per_positive(kind, deltas[0, :1], gt, anchor)
        assert one.tolist() == pytest.approx([expected], rel=1e-5)
        on_rows = regression_on_rows(kind, deltas, assignment, rows, None)
        assert on_rows.tolist() == pytest.approx([expected], rel=1e-5)
        per_anchor = regression_per_anchor(kind, deltas, assignment)
        assert per_anchor.tolist() == [pytest.approx([expected, 0.0], rel=1e-5)]


def test_l1_and_asl1_give_one_loss_per_positive() -> None:
    """(P, 4) deltas -> (P,) losses, each the sum over that positive's four coordinates."""
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    pred = torch.tensor([[0.1, 0.0, 0.0, 0.0], [0.0, -0.2, 0.0, 0.0], [0.0, 0.0, 0.3, 0.4]])
    l1 = regression_loss_per_positive("l1", pred, anchors, anchors)
    assert l1.tolist() == pytest.approx([0.1, 0.2, 0.7], rel=1e-5)
    mu = 0.5
    asl = regression_loss_per_positive("asl1", pred, anchors, anchors, mu=mu)
    by_hand = [sum(math.sqrt(v * v + mu * mu) - mu for v in row) for row in pred.tolist()]
    assert asl.tolist() == pytest.approx(by_hand, rel=1e-5)


def test_isr_p_defaults_k_two_bias_zero() -> None:
    """One class, one object, IoUs .9 .8 .7: ranks 0 1 2, u = (3 - r) / 3, w = u^2."""
    weights = isr_p_weights(
        torch.tensor([0.9, 0.8, 0.7]),
        torch.zeros(3, dtype=torch.long),
        torch.zeros(3, dtype=torch.long),
    )
    assert weights.tolist() == pytest.approx([1.0, 4 / 9, 1 / 9], rel=1e-6)


def _probs_logits(probs: list[float]) -> torch.Tensor:
    return torch.tensor([[math.log(p / (1 - p))] for p in probs])


def test_ghmc_defaults_thirty_bins_momentum_0_75() -> None:
    """p 0.02 and 0.04 (target 0) fall in different bins of 30 (edges 1/30 = .033); the second
    call's bin-0 density is .75 * 2 + .25 * 1 = 1.75 (EMA from the first count)."""
    ghm = GHMC()
    first = ghm.harmonizing_weights(
        _probs_logits([0.02, 0.01, 0.04]), torch.zeros(3, 1), torch.ones(3)
    )
    assert first[:, 0].tolist() == pytest.approx([3 / 2 / 2, 3 / 2 / 2, 3 / 1 / 2], rel=1e-6)
    second = ghm.harmonizing_weights(_probs_logits([0.02]), torch.zeros(1, 1), torch.ones(1))
    assert second[0, 0].item() == pytest.approx(1 / 1.75, rel=1e-6)


def test_ghmr_defaults_mu_0_02_ten_bins_momentum_0_7() -> None:
    """g = |d| / sqrt(d^2 + mu^2): d = .002 -> .0995 (bin 0 of 10), d = .0022 -> .1093 (bin 1);
    with 11 bins both would share bin 1. Second call: bin 0 density .7 * 1 + .3 * 2 = 1.3."""
    ghm = GHMR()
    d = torch.tensor([[0.002], [0.0022]])
    loss = ghm(d, torch.zeros(2, 1), torch.ones(2))
    asl = [math.sqrt(v * v + 0.0004) - 0.02 for v in (0.002, 0.0022)]
    assert loss.item() == pytest.approx(sum(asl) / 2, rel=1e-4)  # two bins of one: w = 1 / 2
    loss = ghm(torch.tensor([[0.002], [0.002]]), torch.zeros(2, 1), torch.ones(2))
    assert loss.item() == pytest.approx(2 * asl[0] / 1.3, rel=1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bins": 0, "momentum": 0.5},
        {"bins": 2, "momentum": 1.0},
        {"bins": 2, "momentum": -0.1},
        {"bins": 2, "momentum": 0.5, "level_mode": "levels"},
        {"bins": 2, "momentum": 0.5, "ema_init": "one"},
    ],
)
def test_gradient_density_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        GradientDensity(**kwargs)


def test_gradient_density_accepts_the_edge_settings() -> None:
    """One bin and momentum 0 are legal (the histogram degenerates to a mean)."""
    GradientDensity(bins=1, momentum=0.0)
    GradientDensity(bins=1, momentum=0.999)


def test_unknown_regression_loss_is_refused_at_construction() -> None:
    """Every loss names the bad option when built, not at the first training step."""
    for build in (
        lambda: GhmDetectionLoss(ghm_r=False, reg_loss="l2"),
        lambda: RandomSamplingLoss(reg_loss="l2"),
        lambda: FocalDetectionLoss(reg_loss="l2"),
    ):
        with pytest.raises(ValueError, match="reg_loss='l2'"):
            build()


@pytest.mark.parametrize(
    "num_samples,pos_fraction,ok",
    [(1, 0.25, True), (0, 0.25, False), (4, 0.0, True), (4, 1.0, True), (4, -0.1, False), (4, 1.1, False)],
)  # fmt: skip
def test_sampling_budget_bounds(num_samples: int, pos_fraction: float, ok: bool) -> None:
    if ok:
        RandomSamplingLoss(num_samples=num_samples, pos_fraction=pos_fraction)
    else:
        with pytest.raises(ValueError, match="num_samples"):
            RandomSamplingLoss(num_samples=num_samples, pos_fraction=pos_fraction)


def test_fl_star_accepts_any_positive_gamma() -> None:
    """FL* only needs gamma > 0; at gamma 0.5 and x = 0 each element costs ln(2) / 0.5."""
    FocalStarDetectionLoss(gamma=0.5)
    rows = sigmoid_row_loss(
        torch.zeros(1, 2), torch.tensor([1]), SigmoidFamily("focal-star", gamma=0.5)
    )
    assert rows.item() == pytest.approx(2 * LN2 / 0.5, rel=1e-6)


def test_bool_option_words() -> None:
    for word, value in (("yes", True), ("on", True), ("1", True), ("no", False), ("off", False)):
        assert resolve_options("pisa", {"carl_rescale": word})["carl_rescale"] is value


def test_describe_lists_own_options_before_shared_ones_with_choices() -> None:
    """`pipeline losses` shows a loss's own options first, then reg_* / sync_*; string options
    carry their allowed values; each loss has its summary and recommended clip."""
    described = {d["name"]: d for d in describe_losses()}
    names = [o["name"] for o in described["focal"]["options"]]
    assert names == [
        "alpha",
        "gamma",
        "reg_loss",
        "reg_beta",
        "reg_mu",
        "reg_weight",
        "sync_normalizer",
    ]
    options = {o["name"]: o for o in described["ghm"]["options"]}
    assert options["reg_loss"]["choices"] == list(REG_LOSS_NAMES)
    assert options["level_mode"]["choices"] == ["global", "per-level", "reference"]
    assert options["bins"]["choices"] == []
    assert described["ghm"]["grad_clip"] == 35.0 and described["focal"]["grad_clip"] is None
    assert described["ohem"]["summary"] == LOSSES["ohem"].summary
    assert "OHEM" in described["ohem"]["summary"]


def test_ghm_without_ghm_c_classifies_by_retinanet_focal_loss() -> None:
    """ghm_c=false (GHM-R alone): the focal term at alpha 0.25, gamma 2, / 1 positive, by hand."""
    deltas, _, _, assignment = _one_positive()  # anchor 0: class 0; anchor 1: background
    logits = torch.tensor([[[1.0, -2.0], [0.5, -1.0]]])

    def focal(x: float, positive: bool) -> float:
        p = 1 / (1 + math.exp(-x))
        p_t, alpha_t = (p, 0.25) if positive else (1 - p, 0.75)
        return -alpha_t * (1 - p_t) ** 2 * math.log(p_t)

    by_hand = focal(1.0, True) + focal(-2.0, False) + focal(0.5, False) + focal(-1.0, False)
    ghm_r_alone = GhmDetectionLoss(ghm_c=False)(logits, deltas, assignment)
    both = GhmDetectionLoss()(logits, deltas, assignment)
    assert ghm_r_alone["cls"].item() == pytest.approx(by_hand, rel=1e-5)
    assert ghm_r_alone["reg"].item() == pytest.approx(both["reg"].item(), rel=1e-6)
    assert both["cls"].item() != pytest.approx(by_hand, rel=1e-2)

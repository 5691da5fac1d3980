"""Focal Loss, FL*, CE baselines and regression: values and derivatives from the papers' formulas.

Expected numbers come from the definitions evaluated with `math` (docs/losses-and-formulas.md, Focal Loss paper
and its appendix), never from our own outputs.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.losses_helpers import random_batch
from train.losses import (
    FocalDetectionLoss,
    asl1,
    build_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_star,
)
from train.losses.fused import SigmoidFamily, sigmoid_row_loss


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _focal(x: float, y: int, alpha: float, gamma: float) -> float:
    p = _sigmoid(x)
    p_t = p if y == 1 else 1 - p
    alpha_t = 1.0 if alpha < 0 else (alpha if y == 1 else 1 - alpha)
    return -alpha_t * (1 - p_t) ** gamma * math.log(p_t)


def _focal_grad(x: float, y: int, alpha: float, gamma: float) -> float:
    """dFL/dx = alpha_t y' (1 - p_t)^gamma (gamma p_t log(p_t) + p_t - 1) (docs/losses-and-formulas.md)."""
    p = _sigmoid(x)
    p_t, sign = (p, 1.0) if y == 1 else (1 - p, -1.0)
    alpha_t = 1.0 if alpha < 0 else (alpha if y == 1 else 1 - alpha)
    return alpha_t * sign * (1 - p_t) ** gamma * (gamma * p_t * math.log(p_t) + p_t - 1)


def _focal_star(x: float, y: int, gamma: float, beta: float) -> float:
    x_t = x if y == 1 else -x
    return -math.log(_sigmoid(gamma * x_t + beta)) / gamma


def _focal_star_grad(x: float, y: int, gamma: float, beta: float) -> float:
    """dFL*/dx = y' (p*_t - 1) (the paper's appendix)."""
    sign = 1.0 if y == 1 else -1.0
    return sign * (_sigmoid(gamma * sign * x + beta) - 1)


POINTS = [(-3.0, 0), (-3.0, 1), (0.0, 0), (0.0, 1), (0.7, 1), (2.5, 0), (4.0, 1)]


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.75, 0.0), (0.5, 1.0)])
def test_focal_values_and_gradient_match_the_paper(alpha: float, gamma: float) -> None:
    x = torch.tensor([p[0] for p in POINTS], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([float(p[1]) for p in POINTS], dtype=torch.float64)
    loss = sigmoid_focal_loss(x, y, alpha, gamma)
    loss.sum().backward()
    for i, (xi, yi) in enumerate(POINTS):
        assert loss[i].item() == pytest.approx(_focal(xi, yi, alpha, gamma), rel=1e-5)
        assert x.grad[i].item() == pytest.approx(
            _focal_grad(xi, yi, alpha, gamma), rel=1e-4, abs=1e-7
        )


def test_focal_hand_values() -> None:
    """x = 0 (p = 0.5), alpha .25, gamma 2: positive .25 * .25 * ln 2, negative .75 * .25 * ln 2."""
    loss = sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]))
    assert loss.tolist() == pytest.approx([0.0625 * math.log(2), 0.1875 * math.log(2)], rel=1e-6)


@pytest.mark.parametrize("gamma,beta", [(4.0, 0.0), (2.0, 1.0), (1.0, -0.5)])
def test_focal_star_values_and_gradient(gamma: float, beta: float) -> None:
    x = torch.tensor([p[0] for p in POINTS], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([float(p[1]) for p in POINTS], dtype=torch.float64)
    loss = sigmoid_focal_loss_star(x, y, gamma, beta)
    loss.sum().backward()
    for i, (xi, yi) in enumerate(POINTS):
        assert loss[i].item() == pytest.approx(_focal_star(xi, yi, gamma, beta), rel=1e-5)
        assert x.grad[i].item() == pytest.approx(
            _focal_star_grad(xi, yi, gamma, beta), rel=1e-5, abs=1e-9
        )


def test_focal_at_gamma_zero_is_alpha_balanced_ce() -> None:
    x = torch.linspace(-6, 6, 25)
    y = (torch.arange(25) % 3 == 0).float()
    p_t = torch.where(y > 0, torch.sigmoid(x), 1 - torch.sigmoid(x))
    alpha_t = torch.where(y > 0, torch.tensor(0.3), torch.tensor(0.7))
    assert torch.allclose(sigmoid_focal_loss(x, y, 0.3, 0.0), -alpha_t * torch.log(p_t), atol=1e-6)


def test_focal_star_rejects_gamma_zero() -> None:
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal_loss_star(torch.zeros(1), torch.zeros(1), gamma=0.0)


FAMILIES = [
    SigmoidFamily("focal", 0.25, 2.0),
    SigmoidFamily("focal", -1.0, 0.0),
    SigmoidFamily("focal", 0.75, 0.0),
    SigmoidFamily("focal", 0.4, 1.5),
    SigmoidFamily("focal-star", gamma=4.0, beta=0.5),
]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f"{f.kind}-{f.alpha}-{f.gamma}")
def test_fused_rows_equal_the_elementwise_definition(family: SigmoidFamily) -> None:
    """The fast closed-form path equals autograd over the textbook formula, values and grads."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=gen, dtype=torch.float64) * 5
    labels = torch.randint(-1, 6, (300,), generator=gen)
    targets = torch.zeros(300, 6, dtype=torch.float64)
    targets[labels >= 0, labels[labels >= 0]] = 1
    row_weights = torch.rand(300, generator=gen)
    fused_x, plain_x = x.float().requires_grad_(), x.float().requires_grad_()
    fused = sigmoid_row_loss(fused_x, labels, family)
    if family.kind == "focal":
        plain = sigmoid_focal_loss(plain_x, targets, family.alpha, family.gamma).sum(1)
    else:
        plain = sigmoid_focal_loss_star(plain_x, targets, family.gamma, family.beta).sum(1)
    (fused * row_weights).sum().backward()
    (plain * row_weights).sum().backward()
    assert torch.allclose(fused, plain, rtol=1e-5, atol=1e-5)
    assert torch.allclose(fused_x.grad, plain_x.grad, rtol=1e-5, atol=1e-6)


def test_focal_detection_loss_is_the_retinanet_recipe() -> None:
    """Sum of FL over non-ignored anchors x classes / positives, + smooth-L1 / positives."""
    batch = random_batch(seed=1)
    loss = FocalDetectionLoss()
    parts = loss(batch.cls_logits, batch.box_deltas, batch.assignment)
    a = batch.assignment
    targets = torch.zeros_like(batch.cls_logits)
    targets[a.positive, a.labels[a.positive]] = 1
    elementwise = sigmoid_focal_loss(batch.cls_logits, targets) * a.valid[..., None]
    num_pos = a.positive.sum().float()
    assert parts["cls"].item() == pytest.approx((elementwise.sum() / num_pos).item(), rel=1e-5)
    assert parts["reg"].item() > 0


def test_ce_and_balanced_ce_are_focal_with_gamma_zero() -> None:
    batch = random_batch(seed=2)
    args = (batch.cls_logits, batch.box_deltas, batch.assignment)
    ce = build_loss("ce")(*args)["cls"]
    balanced = build_loss("balanced-ce")(*args)["cls"]
    assert ce.item() == pytest.approx(
        build_loss("focal", {"alpha": -1, "gamma": 0})(*args)["cls"].item()
    )
    assert balanced.item() == pytest.approx(
        FocalDetectionLoss(alpha=0.75, gamma=0.0)(*args)["cls"].item()
    )
    # CE is swamped by easy negatives: far larger than focal under the same normalization.
    assert ce.item() > 5 * build_loss("focal")(*args)["cls"].item()


def test_asl1_value_and_gradient() -> None:
    """ASL1 = sqrt(d^2 + mu^2) - mu, d ASL1 / d d = d / sqrt(d^2 + mu^2) (GHM paper)."""
    mu = 0.02
    d = torch.tensor([-1.0, -0.02, 0.0, 0.005, 0.3], dtype=torch.float64, requires_grad=True)
    loss = asl1(d, torch.zeros_like(d), mu)
    loss.sum().backward()
    for i, di in enumerate(d.tolist()):
        assert loss[i].item() == pytest.approx(math.sqrt(di * di + mu * mu) - mu, abs=1e-12)
        assert d.grad[i].item() == pytest.approx(di / math.sqrt(di * di + mu * mu), abs=1e-12)
        assert abs(d.grad[i].item()) < 1


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 1.0)])
def test_sigmoid_focal_loss_matches_torchvision(alpha: float, gamma: float) -> None:
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(50, 7, generator=gen) * 4
    y = (torch.rand(50, 7, generator=gen) < 0.2).float()
    for reduction in ("none", "mean", "sum"):
        ours = sigmoid_focal_loss(x, y, alpha, gamma, reduction)
        assert torch.allclose(ours, tv_focal(x, y, alpha, gamma, reduction), atol=1e-6)


def test_second_backward_through_a_fused_loss_is_refused() -> None:
    x = torch.randn(10, 3, requires_grad=True)
    loss = sigmoid_row_loss(x, torch.full((10,), -1), SigmoidFamily()).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already used"):
        loss.backward()

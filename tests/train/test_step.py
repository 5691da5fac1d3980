"""TrainStep on a one-weight detector whose loss and gradient are worked out by hand.

The "detector" has a single weight w and one anchor. For a batch of one image whose pixels are
all 2, its forward returns cls = 2w and box = w^2, and the loss parts are taken as they are:
cls + box = 2w + w^2, so dL/dw = 2 + 2w. Plain SGD (lr 0.1, no momentum) makes every update
a number that can be written down: from w = 1 the gradient is 4 and w becomes 0.6.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from train.ema import RAMP_STEPS, ModelEma
from train.step import TrainStep, freeze_batchnorm, set_train_mode

LR = 0.1


class OneWeight(nn.Module):
    def __init__(self, w: float = 1.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.register_buffer("anchors", torch.tensor([[0.0, 0.0, 8.0, 8.0]]))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixel = images.mean()
        return (self.w * pixel).reshape(1, 1, 1), (self.w**2).reshape(1, 1, 1)


def sum_parts(cls: torch.Tensor, box: torch.Tensor, assignment: object) -> dict[str, torch.Tensor]:
    return {"cls": cls.sum(), "box": box.sum()}


def sqrt_cls(cls: torch.Tensor, box: torch.Tensor, assignment: object) -> dict[str, torch.Tensor]:
    """Finite loss, infinite gradient at w = 1: d sqrt(2w - 2) / dw is 1 / 0."""
    return {"cls": torch.sqrt(cls.sum() - 2.0), "box": box.sum()}


def nan_cls(cls: torch.Tensor, box: torch.Tensor, assignment: object) -> dict[str, torch.Tensor]:
    return {"cls": cls.sum() * float("nan"), "box": box.sum()}


def _batch() -> tuple[torch.Tensor, list[dict]]:
    images = torch.full((1, 3, 8, 8), 2, dtype=torch.uint8)
    target = {
        "boxes": torch.tensor([[1.0, 1.0, 7.0, 7.0]]),
        "labels": torch.tensor([0]),
        "crowd_boxes": torch.zeros(0, 4),
    }
    return images, [target]


def _step(
    loss=sum_parts, grad_clip: float | None = None, ema: bool = False, w: float = 1.0
) -> TrainStep:
    model = OneWeight(w)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    average = ModelEma(model, decay=0.5) if ema else None
    return TrainStep(model, model, loss, optimizer, grad_clip, amp=False, ema=average)


def test_a_step_returns_the_loss_parts_and_applies_the_sgd_update() -> None:
    step = _step()
    parts = step(*_batch())
    assert parts == {"cls": pytest.approx(2.0), "box": pytest.approx(1.0)}
    assert all(isinstance(v, float) for v in parts.values())
    assert step.model.w.item() == pytest.approx(1.0 - LR * 4.0)  # grad 2 + 2w = 4


def test_each_step_uses_only_its_own_gradient() -> None:
    step = _step()
    step(*_batch())  # w: 1 -> 0.6
    step(*_batch())  # grad 2 + 1.2 = 3.2 (accumulated it would be 7.2, w -> -0.12)
    assert step.model.w.item() == pytest.approx(0.6 - LR * 3.2)


def test_the_gradient_norm_is_clipped_to_grad_clip() -> None:
    step = _step(grad_clip=1.0)
    step(*_batch())  # |grad| 4 clipped to 1
    assert step.model.w.item() == pytest.approx(1.0 - LR * 1.0)
    assert step.model.w.grad.item() == pytest.approx(1.0)
    loose = _step(grad_clip=10.0)
    loose(*_batch())  # |grad| 4 under the clip: untouched
    assert loose.model.w.item() == pytest.approx(1.0 - LR * 4.0)


def test_the_gradient_norm_before_clipping_is_kept_for_the_logs() -> None:
    """|grad| = 2 + 2w = 4 at w = 1, with or without --grad-clip (clipping leaves the report)."""
    for grad_clip in (None, 1.0):
        step = _step(grad_clip=grad_clip)
        assert step.last_grad_norm is None
        step(*_batch())
        assert step.last_grad_norm == pytest.approx(4.0)
    unclipped = _step()
    unclipped(*_batch())
    assert unclipped.model.w.item() == pytest.approx(1.0 - LR * 4.0)  # measuring changed nothing


def test_a_non_finite_loss_skips_the_step_names_the_part_and_frees_the_gradients(
    caplog: pytest.LogCaptureFixture,
) -> None:
    step = _step(nan_cls)
    step.model.w.grad = torch.tensor(5.0)  # left over from an earlier step
    with caplog.at_level(logging.WARNING, logger="train.step"):
        assert step(*_batch()) is None
    assert "non-finite loss in cls; step skipped" in caplog.text
    assert step.model.w.item() == 1.0
    assert step.model.w.grad is None


def test_an_infinite_gradient_norm_skips_the_step_and_frees_the_gradients(
    caplog: pytest.LogCaptureFixture,
) -> None:
    step = _step(sqrt_cls, grad_clip=10.0)  # the loss is finite, its gradient is not
    with caplog.at_level(logging.WARNING, logger="train.step"):
        assert step(*_batch()) is None
    assert "non-finite gradient norm; step skipped" in caplog.text
    assert step.model.w.item() == 1.0
    assert step.model.w.grad is None


def test_the_ema_follows_the_updated_weight() -> None:
    step = _step(ema=True)
    step(*_batch())  # w: 1 -> 0.6; the EMA starts at 1
    decay = 0.5 * (1 - math.exp(-1 / RAMP_STEPS))
    assert step.ema is not None
    assert step.ema.module.w.item() == pytest.approx(decay * 1.0 + (1 - decay) * 0.6)


def _bn_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.BatchNorm1d(2))


def test_set_train_mode_trains_everything_or_all_but_batchnorm() -> None:
    net = _bn_net().eval()
    set_train_mode(net, freeze_bn=False)
    assert all(m.training for m in net.modules())
    net.eval()
    set_train_mode(net, freeze_bn=True)
    assert [m.training for m in net] == [True, False, True, False]
    assert net.training


def test_freeze_batchnorm_counts_and_freezes_only_batchnorm_layers() -> None:
    net = _bn_net()
    assert freeze_batchnorm(net) == 2
    assert [p.requires_grad for p in net.parameters()] == [True, True, False, False, False, False]

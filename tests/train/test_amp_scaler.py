"""fp16 AMP with a GradScaler (the CUDA path), exercised on the CPU by asking for fp16 autocast.

On a GPU, `TrainStep` trains under fp16 autocast with a GradScaler: an overflowing step must be
skipped with the scale lowered, and gradients must be unscaled before clipping. No GPU here, so
the same code runs with CPU fp16 autocast and a CPU GradScaler.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train.step
from train.builders import build_model, build_optimizer
from train.config import TrainConfig
from train.losses import build_loss

CONFIG = TrainConfig(out=Path("unused"), img_size=64, fpn_channels=16, head_convs=1)


def _batch() -> tuple[torch.Tensor, list[dict]]:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=gen) * 255
    boxes = torch.tensor([[8.0, 8.0, 40.0, 36.0], [20.0, 10.0, 60.0, 50.0]])
    targets = [
        {"boxes": boxes[i : i + 1], "labels": torch.tensor([i]), "crowd_boxes": torch.zeros(0, 4)}
        for i in range(2)
    ]
    return images, targets


def _fp16_step(monkeypatch: pytest.MonkeyPatch, init_scale: float) -> train.step.TrainStep:
    monkeypatch.setattr(train.step, "autocast_dtype", lambda device, amp: torch.float16)
    torch.manual_seed(0)
    model = build_model(CONFIG, 5, torch.device("cpu")).train()
    optimizer = build_optimizer(model, CONFIG)
    step = train.step.TrainStep(model, model, build_loss("focal"), optimizer, 35.0, amp=True)
    assert step.scaler.is_enabled()  # fp16 autocast brings the scaler, as on CUDA
    step.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return step


def _params(step: train.step.TrainStep) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in step.model.named_parameters()}


def test_an_overflowing_fp16_step_is_skipped_and_the_scale_lowered(monkeypatch) -> None:
    step = _fp16_step(monkeypatch, init_scale=2.0**60)  # scaled fp16 gradients overflow
    before = _params(step)
    assert step(*_batch()) is not None  # the scaler's business, not a bad step
    assert all(torch.equal(before[k], v) for k, v in _params(step).items())
    assert step.scaler.get_scale() == 2.0**59


def test_gradients_are_unscaled_before_clipping(monkeypatch) -> None:
    norms = []
    for scale in (2.0**4, 2.0**12):
        step = _fp16_step(monkeypatch, init_scale=scale)
        step(*_batch())
        grads = [p.grad for p in step.model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        assert step.scaler.get_scale() == scale  # no overflow: the scale stays
    # Unscaled, the same step has the same gradient at either scale, below the clip (35); left
    # scaled, it would be 256x larger, or clipped to exactly 35.
    assert norms[0] < 30.0
    assert norms[1] == pytest.approx(norms[0], rel=1e-2)

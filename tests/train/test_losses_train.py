"""Every registered loss trains, stays finite at extreme logits and under bf16 autocast.

STAND-IN for the end-to-end `pipeline train --loss NAME` test: the model and trainer are being
written separately, so each loss here drives a tiny parameter-only "model" on real anchors and a
real assignment for a few optimizer steps. The CLI end-to-end test replaces it later.
"""

from __future__ import annotations

import pytest
import torch

from tests.losses_helpers import random_batch
from train.losses import LOSSES, build_loss, load_loss_state_dict, loss_state_dict
from train.losses.sampling import sample_anchors


class TinyHead(torch.nn.Module):
    """Logits and deltas from parameters through one shared linear map (so steps interact)."""

    def __init__(self, num_anchors: int, num_classes: int, batch: int = 2) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.features = torch.nn.Parameter(torch.randn(batch, num_anchors, 8, generator=gen))
        self.cls = torch.nn.Linear(8, num_classes)
        self.box = torch.nn.Linear(8, 4)
        torch.nn.init.constant_(self.cls.bias, -4.6)  # the RetinaNet prior, pi = 0.01

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls(self.features), self.box(self.features)


@pytest.mark.parametrize("name", list(LOSSES))
def test_each_loss_trains_a_tiny_model_for_three_steps(name: str) -> None:
    torch.manual_seed(0)
    batch = random_batch(seed=21)
    head = TinyHead(batch.cls_logits.shape[1], batch.cls_logits.shape[2])
    loss_fn = build_loss(name)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.01)
    for _ in range(3):
        parts = loss_fn(*head(), batch.assignment)
        total = sum(parts.values())
        optimizer.zero_grad()
        total.backward()
        assert torch.isfinite(total), f"{name}: {parts}"
        for param in head.parameters():
            assert torch.isfinite(param.grad).all()
        clip = LOSSES[name].grad_clip
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(head.parameters(), clip)
        optimizer.step()
    assert head.cls.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(LOSSES))
def test_finite_for_logits_in_plus_minus_50(name: str) -> None:
    batch = random_batch(seed=22)
    count = batch.cls_logits.numel()
    logits = torch.linspace(-50, 50, count)[torch.randperm(count)].view_as(batch.cls_logits)
    logits = logits.requires_grad_()
    deltas = (batch.box_deltas * 20).requires_grad_()  # wild boxes too
    parts = build_loss(name)(logits, deltas, batch.assignment)
    sum(parts.values()).backward()
    assert all(torch.isfinite(v) for v in parts.values()), parts
    assert torch.isfinite(logits.grad).all() and torch.isfinite(deltas.grad).all()


@pytest.mark.parametrize("name", list(LOSSES))
def test_bf16_autocast_is_finite_and_close_to_fp32(name: str) -> None:
    batch = random_batch(seed=23)
    layer = torch.nn.Linear(4, 4)
    torch.nn.init.eye_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    torch.manual_seed(1)
    fp32 = build_loss(name)(layer(batch.cls_logits), batch.box_deltas, batch.assignment)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(batch.cls_logits)
        assert logits.dtype == torch.bfloat16
        parts = build_loss(name)(logits, batch.box_deltas.bfloat16(), batch.assignment)
    sum(parts.values()).backward()
    assert torch.isfinite(layer.weight.grad).all()
    for key, value in parts.items():
        assert value.dtype == torch.float32 and torch.isfinite(value)
        assert value.item() == pytest.approx(fp32[key].item(), rel=0.1, abs=0.02), key


def test_sampling_respects_budget_and_ratio() -> None:
    gen = torch.Generator().manual_seed(3)
    positive = torch.rand(2, 1000, generator=gen) < 0.1  # ~100 positives per image
    positive[1] = False
    positive[1, :10] = True  # image 1 has too few positives: negatives fill the budget
    valid = torch.rand(2, 1000, generator=gen) > 0.05
    valid |= positive
    index, taken = sample_anchors(torch.rand(2, 1000, generator=gen), positive, valid, 64, 0.25)
    picked_pos = (torch.gather(positive, 1, index) & taken).sum(1)
    assert picked_pos.tolist() == [16, 10]
    assert taken.sum(1).tolist() == [64, 64]
    assert torch.gather(valid, 1, index)[taken].all()


def test_ohem_picks_the_highest_loss_negatives() -> None:
    batch = random_batch(seed=24)
    a = batch.assignment
    logits = batch.cls_logits.clone()
    hard = (~a.positive[0] & a.valid[0]).nonzero()[:5, 0]
    logits[0, hard] = 8.0  # confident false positives: the hardest negatives
    loss = build_loss("ohem", {"num_samples": 16})
    keys = loss.sampling_keys(logits, a)
    index, taken = sample_anchors(keys, a.positive, a.valid, 16, 0.25)
    chosen = set(index[0][taken[0]].tolist())
    assert set(hard.tolist()) <= chosen


def test_state_helpers_for_stateless_and_stateful_losses() -> None:
    assert loss_state_dict(build_loss("focal")) == {}
    load_loss_state_dict(build_loss("focal"), {})
    with pytest.raises(ValueError):
        load_loss_state_dict(build_loss("focal"), {"x": 1})
    ghm = build_loss("ghm")
    assert set(loss_state_dict(ghm)) == {
        "cls_harmonizer.density.acc_sum",
        "reg_harmonizer.density.acc_sum",
    }
    # a checkpoint written while the loss kept its own {"ghm_c", "ghm_r"} layout still loads
    legacy = {"ghm_c": {"density.acc_sum": torch.full((1, 30), 3.0, dtype=torch.float64)},
              "ghm_r": {"density.acc_sum": torch.full((1, 10), 5.0, dtype=torch.float64)}}  # fmt: skip
    load_loss_state_dict(ghm, legacy)
    assert torch.equal(ghm.cls_harmonizer.density.acc_sum, legacy["ghm_c"]["density.acc_sum"])
    assert torch.equal(ghm.reg_harmonizer.density.acc_sum, legacy["ghm_r"]["density.acc_sum"])
    with pytest.raises(RuntimeError, match="Missing key"):
        load_loss_state_dict(ghm, {"ghm_c": legacy["ghm_c"]})  # half a state is refused

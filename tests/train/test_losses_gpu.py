"""CUDA: every loss runs without a host sync and matches its CPU result (marked `cuda`: needs
torch and a CUDA device only, not TensorRT; skipped without one).

The GPU path differs from the CPU one in PISA (all rows masked instead of gathered positives)
and in where the EMA state lives; `set_sync_debug_mode("error")` turns any host sync inside the
loss (an .item(), a nonzero, a data-dependent shape) into an exception.
"""

from __future__ import annotations

import pytest
import torch

from tests.losses_helpers import random_batch
from train.assign import AnchorAssignment
from train.losses import LOSSES, build_loss

pytestmark = pytest.mark.cuda  # torch on a CUDA device only; tests/conftest.py skips it elsewhere


def _to_cuda(assignment: AnchorAssignment) -> AnchorAssignment:
    return AnchorAssignment(**{k: v.cuda() for k, v in vars(assignment).items()})


@pytest.mark.parametrize("name", [n for n in LOSSES if n not in ("random", "ohem")])
def test_cuda_loss_has_no_host_sync_and_matches_cpu(name: str) -> None:
    batch = random_batch(seed=41)
    cpu = build_loss(name)(batch.cls_logits, batch.box_deltas, batch.assignment)
    logits = batch.cls_logits.cuda().requires_grad_()
    deltas = batch.box_deltas.cuda().requires_grad_()
    assignment = _to_cuda(batch.assignment)
    loss_fn = build_loss(name)
    loss_fn(logits, deltas, assignment)  # warm-up: lazy CUDA init may sync once
    loss_fn = build_loss(name)
    torch.cuda.set_sync_debug_mode("error")
    try:
        parts = loss_fn(logits, deltas, assignment)
        sum(parts.values()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for key, value in parts.items():
        assert value.item() == pytest.approx(cpu[key].item(), rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("name", ["random", "ohem"])
def test_cuda_sampling_losses_have_no_host_sync(name: str) -> None:
    batch = random_batch(seed=42)
    logits = batch.cls_logits.cuda().requires_grad_()
    deltas = batch.box_deltas.cuda()
    assignment = _to_cuda(batch.assignment)
    loss_fn = build_loss(name)
    loss_fn(logits, deltas, assignment)
    torch.cuda.set_sync_debug_mode("error")
    try:
        parts = loss_fn(logits, deltas, assignment)
        sum(parts.values()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(v).item() for v in parts.values())

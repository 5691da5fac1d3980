"""Two gloo processes, one image each, equal one process with both images (what DDP must see).

With a shared parameter DDP averages the ranks' gradients, so rank r's gradient w.r.t. its own
logits must be world_size times the single-process gradient w.r.t. that image's logits, and the
mean of the ranks' losses must be the single-process loss. That holds only if the positive
normalizer and GHM's bin counts are all-reduced; with `sync_counts=false` (the reference's
per-GPU counts) GHM differs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.cli_support import free_port
from tests.losses_helpers import random_batch
from train.assign import AnchorAssignment
from train.losses import build_loss

CASES = [
    ("focal", {}),
    ("ghm", {"momentum": "0"}),
    ("ghm", {}),
    ("ghm", {"level_mode": "per-level"}),
    ("ghm", {"sync_counts": "false"}),
]
WORLD = 2


def _image(assignment: AnchorAssignment, i: int) -> AnchorAssignment:
    """The assignment of image i alone (gt ids stay unique, which is all the losses need)."""
    fields = {
        k: getattr(assignment, k)[i : i + 1]
        for k in ("labels", "positive", "valid", "gt_boxes", "gt_ids", "max_iou")
    }
    return AnchorAssignment(anchors=assignment.anchors, **fields)


def _losses_and_grads(
    loss_name: str,
    options: dict,
    logits: torch.Tensor,
    deltas: torch.Tensor,
    assignment: AnchorAssignment,
) -> tuple[list, list]:
    """Two calls (so GHM's EMA state is exercised): the loss values and logits gradients."""
    loss_fn = build_loss(loss_name, options)
    values, grads = [], []
    for step in range(2):
        x = (logits + 0.5 * step).detach().requires_grad_()
        parts = loss_fn(x, deltas, assignment)
        total = sum(parts.values())
        total.backward()
        values.append(total.detach())
        grads.append(x.grad)
    return values, grads


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        batch = random_batch(seed=31, objects=(4, 1))
        own = slice(rank, rank + 1)
        assignment = _image(batch.assignment, rank)
        results = [
            _losses_and_grads(
                name, options, batch.cls_logits[own], batch.box_deltas[own], assignment
            )
            for name, options in CASES
        ]
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    mp.start_processes(
        _worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn"
    )
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    batch = random_batch(seed=31, objects=(4, 1))
    for case_index, (name, options) in enumerate(CASES):
        values, grads = _losses_and_grads(
            name, options, batch.cls_logits, batch.box_deltas, batch.assignment
        )
        synced = options.get("sync_counts") != "false"
        for step in range(2):
            rank_values = [per_rank[r][case_index][0][step] for r in range(WORLD)]
            rank_grads = torch.cat([per_rank[r][case_index][1][step] for r in range(WORLD)]) / WORLD
            mean_value = sum(rank_values) / WORLD
            if synced:
                assert mean_value.item() == pytest.approx(values[step].item(), rel=1e-4), (
                    name,
                    options,
                )
                assert torch.allclose(rank_grads, grads[step], rtol=1e-3, atol=1e-7), (
                    name,
                    options,
                )
            else:
                assert not torch.allclose(rank_grads, grads[step], rtol=1e-3, atol=1e-7)

"""Loss speed at RetinaNet scale on this CPU: every loss next to plain BCE, and GHM/PISA vs loops.

Scale: 2 images x ~100k anchors (736 px, P3-P7, 9 anchors per location) x 80 classes, objects
with COCO-like sizes, real anchor assignment, regressed boxes near their targets. Each row times
forward + backward (median of --repeats after one warm-up) and, right before it on the same
tensors, BCE-with-logits over all anchors x classes; the ratio is loss / BCE. Targets (issue 3):
every loss <= 3x BCE; GHM and PISA >= 5x faster than straightforward loop implementations
(tests/oracles/loss_loops.py: per-bin loops with host syncs, per-class / per-object loops).

    python bench/losses.py [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tests.oracles.loss_loops import reference_carl, reference_ghmc, reference_ghmr, reference_isr_p
from train.assign import AnchorAssignment, assign_anchors
from train.losses import LOSSES, build_loss, carl_loss, isr_p_weights
from train.losses.fused import SigmoidFamily, sigmoid_row_loss
from train.losses.ghm import anchor_levels
from train.losses.pisa import aligned_iou
from train.model.anchors import AnchorSpec, generate_anchors
from train.model.box_coder import decode_boxes, encode_boxes

IMG_SIZE, BATCH, CLASSES = 736, 2, 80
# GHM configured to compute exactly what the reference implementation computes.
REFERENCE_GHM = {"level_mode": "reference", "ema_init": "zero", "sync_counts": "false"}


def make_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, AnchorAssignment]:
    """Logits near the prior (pi = 0.01), deltas = targets + noise, 5-15 objects per image."""
    gen = torch.Generator().manual_seed(seed)
    anchors = generate_anchors(AnchorSpec(img_size=IMG_SIZE))
    boxes, labels = [], []
    for _ in range(BATCH):
        count = int(torch.randint(5, 16, (1,), generator=gen))
        side = torch.exp(torch.empty(count, 2).uniform_(3.0, 6.0, generator=gen))  # 20-400 px
        corner = (IMG_SIZE - side) * torch.rand(count, 2, generator=gen)
        boxes.append(torch.cat([corner, corner + side], 1))
        labels.append(torch.randint(0, CLASSES, (count,), generator=gen))
    assignment = assign_anchors(anchors, boxes, labels)
    n = anchors.shape[0]
    logits = torch.randn(BATCH, n, CLASSES, generator=gen) * 1.5 - 4.6
    target = encode_boxes(assignment.gt_boxes.clamp(min=0), anchors.expand(BATCH, -1, -1))
    target = torch.where(assignment.positive[..., None], target, torch.zeros_like(target))
    deltas = target + 0.1 * torch.randn(BATCH, n, 4, generator=gen)
    return logits, deltas, assignment


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def paired_ms(
    first: Callable[[], object], second: Callable[[], object], rounds: int = 9, calls: int = 20
) -> tuple[float, float]:
    """Per-call ms of two sub-millisecond functions, alternated in rounds so load hits both."""
    per_round: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, times in zip((first, second), per_round, strict=True):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - start) * 1e3 / calls)
    return statistics.median(per_round[0]), statistics.median(per_round[1])


def fwd_bwd(
    loss_fn: Callable, logits: torch.Tensor, deltas: torch.Tensor, a: AnchorAssignment
) -> Callable:
    def run() -> None:
        x, d = logits.detach().requires_grad_(), deltas.detach().requires_grad_()
        sum(loss_fn(x, d, a).values()).backward()

    return run


def bce_run(logits: torch.Tensor, targets: torch.Tensor, num_pos: torch.Tensor) -> Callable:
    def run() -> None:
        x = logits.detach().requires_grad_()
        (F.binary_cross_entropy_with_logits(x, targets, reduction="sum") / num_pos).backward()

    return run


def ghm_loop(logits: torch.Tensor, deltas: torch.Tensor, a: AnchorAssignment) -> Callable:
    """The reference computation: per FPN level, GHM-C and GHM-R with per-bin loops, shared EMA."""
    levels = anchor_levels(a.anchors).repeat(BATCH)
    targets = torch.zeros(BATCH * logits.shape[1], CLASSES)
    flat_pos = a.positive.reshape(-1)
    targets[flat_pos, a.labels.reshape(-1)[flat_pos]] = 1
    anchors = a.anchors.expand(BATCH, -1, -1)
    gt = torch.where(a.positive[..., None], a.gt_boxes, anchors)
    reg_target = encode_boxes(gt, anchors).view(-1, 4)
    cls_w = a.valid.reshape(-1, 1).float().expand(-1, CLASSES)
    reg_w = flat_pos.float()[:, None].expand(-1, 4)
    state = {"c": [0.0] * 30, "r": [0.0] * 10}

    def run() -> torch.Tensor:
        x = logits.detach().reshape(-1, CLASSES).requires_grad_()
        d = deltas.detach().reshape(-1, 4).requires_grad_()
        total = x.new_zeros(())
        for lv in range(int(levels.max()) + 1):
            on = levels == lv
            total = total + reference_ghmc(x[on], targets[on], cls_w[on], state["c"], 30, 0.75)
            total = total + 10 * reference_ghmr(
                d[on], reg_target[on], reg_w[on], state["r"], 0.02, 10, 0.7
            )
        total.backward()
        return total.detach()

    return run


def pisa_pieces(
    logits: torch.Tensor, deltas: torch.Tensor, a: AnchorAssignment, loops: bool
) -> Callable:
    """ISR-P weights (global M, loss-sum normalized) + CARL fwd/bwd on the batch's positives."""
    flat = a.positive.reshape(-1)
    rows = flat.nonzero().view(-1)
    labels, gt_ids = a.labels.reshape(-1)[rows], a.gt_ids.reshape(-1)[rows]
    anchors = a.anchors[rows % a.anchors.shape[0]]
    boxes = decode_boxes(deltas.reshape(-1, 4)[rows], anchors)
    ious = aligned_iou(boxes, a.gt_boxes.reshape(-1, 4)[rows])
    pos_logits = logits.reshape(-1, CLASSES)[rows]
    row_loss = sigmoid_row_loss(pos_logits, labels, SigmoidFamily()).detach()
    reg = torch.rand(len(rows), 4)

    def run() -> torch.Tensor:
        scores = torch.sigmoid(pos_logits.gather(1, labels[:, None])[:, 0]).requires_grad_()
        if loops:
            weights = reference_isr_p(ious, labels, gt_ids, row_loss)
            carl = reference_carl(scores, reg, avg_factor=float(len(rows)))
        else:
            weights = isr_p_weights(ious, labels, gt_ids, normalizer="global")
            weights = weights * row_loss.sum() / (weights * row_loss).sum()
            carl = carl_loss(scores, reg, avg_factor=float(len(rows)))
        carl.backward()
        return weights

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logits, deltas, a = make_batch()
    targets = torch.zeros_like(logits)
    targets[a.positive, a.labels[a.positive]] = 1
    num_pos = a.positive.sum().float()
    bce = bce_run(logits, targets, num_pos)
    bce()  # warm once; the per-row BCE timings below then skip their warm-up
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load avg {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{BATCH} images x {logits.shape[1]} anchors x {CLASSES} classes, {int(num_pos)} positives "
        f"({100 * num_pos.item() / a.positive.numel():.2f}%), {int((~a.valid).sum())} ignored"
    )
    print(f"\n{'loss':<28}{'ms':>9}{'BCE ms':>9}{'ratio':>8}")
    worst = 0.0
    for name in LOSSES:
        bce_ms = median_ms(bce, args.repeats, warmup=0)
        ms = median_ms(fwd_bwd(build_loss(name), logits, deltas, a), args.repeats)
        worst = max(worst, ms / bce_ms)
        print(f"{name:<28}{ms:>9.1f}{bce_ms:>9.1f}{ms / bce_ms:>8.2f}")
    ref_ghm = build_loss("ghm", REFERENCE_GHM)
    bce_ms = median_ms(bce, args.repeats, warmup=0)
    ms = median_ms(fwd_bwd(ref_ghm, logits, deltas, a), args.repeats)
    print(f"{'ghm (reference modes)':<28}{ms:>9.1f}{bce_ms:>9.1f}{ms / bce_ms:>8.2f}")
    print(f"worst ratio to BCE: {max(worst, ms / bce_ms):.2f} (target <= 3)")

    print(f"\n{'vs straightforward loops':<34}{'ours ms':>9}{'loop ms':>10}{'speedup':>9}")
    loop_run = ghm_loop(logits, deltas, a)
    start = time.perf_counter()
    loop_value = loop_run().item()  # first call from a zero EMA state: one run is seconds
    loop_ms = (time.perf_counter() - start) * 1e3
    print(f"{'GHM-C + GHM-R per level':<34}{ms:>9.1f}{loop_ms:>10.1f}{loop_ms / ms:>9.1f}")
    ours_value = sum(build_loss("ghm", REFERENCE_GHM)(logits, deltas, a).values()).item()
    print(f"  same first-call loss: ours {ours_value:.6f}, loops {loop_value:.6f}")
    vec, loop = paired_ms(
        pisa_pieces(logits, deltas, a, loops=False), pisa_pieces(logits, deltas, a, loops=True)
    )
    print(f"{'PISA ISR-P + CARL on positives':<34}{vec:>9.2f}{loop:>10.2f}{loop / vec:>9.1f}")


if __name__ == "__main__":
    main()

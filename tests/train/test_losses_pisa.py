"""PISA: IoU-HLR on a hand-worked example, ISR-P and CARL properties, reference parity."""

from __future__ import annotations

import pytest
import torch

from tests.losses_helpers import random_batch
from tests.oracles.loss_loops import reference_carl, reference_hlr_rank, reference_isr_p
from train.losses import (
    FocalDetectionLoss,
    PisaCenterDetectionLoss,
    PisaDetectionLoss,
    build_loss,
    carl_loss,
    fused,
    ghm,
    iou_hlr_rank,
    isr_p_weights,
    regression,
)
from train.losses import pisa as pisa_module

# index: (class, object, IoU). Class 0 has objects 0, 1, 4; class 1 has objects 2, 3.
EXAMPLE = [
    (0, 0, 0.90),
    (0, 0, 0.70),
    (0, 1, 0.80),
    (0, 1, 0.60),
    (0, 0, 0.70),  # ties with index 1 inside object 0: input order puts it after
    (1, 2, 0.50),
    (1, 3, 0.95),
    (1, 2, 0.85),
    (0, 4, 0.80),  # ties with index 2 among class 0's local-rank-0 samples: after it
]
# Class 0, local rank 0: {0: .90, 2: .80, 8: .80} -> 0, 1, 2; rank 1: {1: .70, 3: .60} -> 3, 4;
# rank 2: {4} -> 5. Class 1, local rank 0: {6: .95, 7: .85} -> 0, 1; rank 1: {5} -> 2.
EXPECTED_RANK = [0, 3, 1, 4, 5, 2, 0, 1, 2]


def _example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    labels = torch.tensor([e[0] for e in EXAMPLE])
    gt_ids = torch.tensor([e[1] for e in EXAMPLE])
    ious = torch.tensor([e[2] for e in EXAMPLE])
    return ious, labels, gt_ids


def test_iou_hlr_hand_worked_example() -> None:
    ious, labels, gt_ids = _example()
    assert iou_hlr_rank(ious, labels, gt_ids).tolist() == EXPECTED_RANK
    assert reference_hlr_rank(ious, labels, gt_ids).tolist() == EXPECTED_RANK


def test_iou_hlr_priority_breaks_ties_and_mask_keeps_shapes() -> None:
    ious, labels, gt_ids = _example()
    priority = torch.zeros(9, dtype=torch.bool)
    priority[[4, 8]] = True  # now 4 beats 1 in object 0, and 8 beats 2 at class 0's rank 0
    assert iou_hlr_rank(ious, labels, gt_ids, priority=priority).tolist() == [
        0,
        5,
        2,
        4,
        3,
        2,
        0,
        1,
        1,
    ]
    # Interleave padding rows; the masked call ranks the real rows exactly as the compact one.
    pad = torch.tensor([0.99, 0.0, 0.5])
    all_ious = torch.cat([pad, ious])
    all_labels = torch.cat([torch.tensor([0, -1, 1]), labels])
    all_gt = torch.cat([torch.tensor([0, -1, 2]), gt_ids])
    mask = torch.cat([torch.zeros(3, dtype=torch.bool), torch.ones(9, dtype=torch.bool)])
    assert iou_hlr_rank(all_ious, all_labels, all_gt, mask=mask)[3:].tolist() == EXPECTED_RANK


def test_isr_weights_class_and_global_normalizers() -> None:
    ious, labels, gt_ids = _example()
    rank = torch.tensor(EXPECTED_RANK, dtype=torch.float32)
    n_class = torch.where(labels == 0, torch.tensor(6.0), torch.tensor(3.0))
    paper = isr_p_weights(ious, labels, gt_ids, k=2.0, bias=0.1, normalizer="class")
    assert torch.allclose(paper, (0.9 * (n_class - rank) / n_class + 0.1) ** 2)
    reference = isr_p_weights(ious, labels, gt_ids, k=2.0, bias=0.1, normalizer="global")
    assert torch.allclose(reference, (0.9 * (6 - rank) / 6 + 0.1) ** 2)
    assert paper[[0, 6]].tolist() == pytest.approx([1.0, 1.0])  # each class's best: weight 1


def test_isr_keeps_the_positives_loss_sum() -> None:
    """Negatives are unchanged and the positives' total is rescaled back: cls equals focal's."""
    batch = random_batch(seed=11)
    args = (batch.cls_logits, batch.box_deltas, batch.assignment)
    for normalizer in ("class", "global"):
        pisa = PisaDetectionLoss(isr_normalizer=normalizer)(*args)["cls"]
        assert pisa.item() == pytest.approx(FocalDetectionLoss()(*args)["cls"].item(), rel=1e-5)


def test_isr_changes_the_gradient_towards_prime_samples() -> None:
    batch = random_batch(seed=12)
    grads = []
    for loss in (FocalDetectionLoss(), PisaDetectionLoss(carl_weight=0.0)):
        logits = batch.cls_logits.clone().requires_grad_()
        loss(logits, batch.box_deltas, batch.assignment)["cls"].backward()
        grads.append(logits.grad)
    assert not torch.allclose(grads[0], grads[1])


def test_carl_gradient_flows_to_scores_and_grows_with_regression_loss() -> None:
    scores = torch.tensor([0.3, 0.6, 0.5, 0.8, 0.4], requires_grad=True)
    reg = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7])
    carl_loss(scores, reg, k=1.0, bias=0.2).backward()
    # d/dp_i = P (1 - b) / sum(v) * (L_i - sum(v L) / sum(v)): ordered like L, positive above
    # the v-weighted mean, negative below (those scores get pushed up).
    assert torch.argsort(scores.grad).tolist() == torch.argsort(reg).tolist()
    v = 0.8 * scores.detach() + 0.2
    expected = 5 * 0.8 / v.sum() * (reg - (v * reg).sum() / v.sum()) / 5
    assert torch.allclose(scores.grad, expected, atol=1e-6)


def test_carl_rescale_keeps_the_loss_value() -> None:
    scores = torch.tensor([0.3, 0.9, 0.5], requires_grad=True)
    reg = torch.tensor([[0.2, 0.1, 0.0, 0.3], [0.1, 0.1, 0.1, 0.1], [0.5, 0.0, 0.0, 0.0]])
    loss = carl_loss(scores, reg, rescale=True)
    assert loss.item() == pytest.approx(reg.sum().item() / 3, rel=1e-6)
    loss.backward()
    assert scores.grad.abs().sum() > 0


def test_pisa_pieces_match_the_reference_loops() -> None:
    gen = torch.Generator().manual_seed(13)
    count = 60
    labels = torch.randint(0, 3, (count,), generator=gen)
    gt_ids = labels * 10 + torch.randint(0, 4, (count,), generator=gen)  # an object has one class
    ious = 0.4 + 0.55 * torch.rand(count, generator=gen)
    row_loss = torch.rand(count, generator=gen)
    ours = isr_p_weights(ious, labels, gt_ids, k=2.0, bias=0.0, normalizer="global")
    ours = ours * row_loss.sum() / (ours * row_loss).sum()
    assert torch.allclose(ours, reference_isr_p(ious, labels, gt_ids, row_loss), rtol=1e-5)
    scores_a = torch.rand(count, generator=gen).requires_grad_()
    scores_b = scores_a.detach().clone().requires_grad_()
    reg = torch.rand(count, 4, generator=gen)
    a, b = carl_loss(scores_a, reg, avg_factor=7.0), reference_carl(scores_b, reg, avg_factor=7.0)
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert torch.allclose(scores_a.grad, scores_b.grad, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("name", ["focal", "ghm", "pisa", "pisa-center", "ohem"])
def test_gpu_style_masked_path_equals_compact_path(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU path (all rows, masked) computes what the CPU path (gathered positives) does."""
    batch = random_batch(seed=14)
    results = []
    for gpu_style in (False, True):
        if gpu_style:
            for module in (fused, regression, ghm, pisa_module):
                monkeypatch.setattr(module, "selected_rows", lambda p: (torch.arange(p.numel()), p))
        logits = batch.cls_logits.clone().requires_grad_()
        deltas = batch.box_deltas.clone().requires_grad_()
        torch.manual_seed(0)
        parts = build_loss(name)(logits, deltas, batch.assignment)
        sum(parts.values()).backward()
        results.append((parts, logits.grad, deltas.grad))
    (compact, c_logits, c_deltas), (masked, m_logits, m_deltas) = results
    for key in compact:
        assert masked[key].item() == pytest.approx(compact[key].item(), rel=1e-5), key
    assert torch.allclose(c_logits, m_logits, atol=1e-7)
    assert torch.allclose(c_deltas, m_deltas, atol=1e-7)


def test_pisa_center_prefers_centre_inside_at_near_equal_iou() -> None:
    """Two samples of one object: IoU .70 centred outside, .68 centred inside."""
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]] * 2)
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0], [12.0, 12.0, 28.0, 28.0]])  # centres 8, 20
    pos = pisa_module._Positives(
        rows=torch.arange(2), mask=torch.ones(2, dtype=torch.bool), labels=torch.zeros(2, dtype=torch.long),
        gt_ids=torch.zeros(2, dtype=torch.long), anchors=anchors, gt_boxes=gt,
    )  # fmt: skip
    ious = torch.tensor([0.70, 0.68])
    for margin, expected in ((0.05, [1, 0]), (0.01, [0, 1])):
        keys, priority = PisaCenterDetectionLoss(center_margin=margin)._ranking_keys(ious, pos)
        labels, gt_ids = pos.labels, pos.gt_ids
        assert iou_hlr_rank(keys, labels, gt_ids, priority=priority).tolist() == expected
    keys, priority = PisaCenterDetectionLoss(center_margin=0.0)._ranking_keys(
        torch.full((2,), 0.7), pos
    )
    assert iou_hlr_rank(keys, pos.labels, pos.gt_ids, priority=priority).tolist() == [1, 0]

"""Property tests (hypothesis) over random and extreme inputs: box coder, IoU, IoU-HLR, GHM bins.

Each property says what must hold for every input: finite, in range, and invariant (or
equivariant) under a permutation of the rows wherever the quantity does not depend on order.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

from train.assign import _batched_iou
from train.losses.ghm import GHMC, GHMR, GradientDensity
from train.losses.pisa import aligned_iou, iou_hlr_rank, isr_p_weights
from train.model.box_coder import DELTA_CLAMP, decode_boxes, encode_boxes

FAST = settings(max_examples=60, deadline=None)
coord = st.floats(-1e4, 1e4, allow_nan=False, width=32)
side = st.floats(2**-7, 1e4, allow_nan=False, width=32)


@st.composite
def boxes(
    draw: st.DrawFn, min_rows: int = 1, max_rows: int = 12, sides: st.SearchStrategy = side
) -> torch.Tensor:
    """(n, 4) float32 xyxy boxes with positive width and height."""
    n = draw(st.integers(min_rows, max_rows))
    rows = [
        [x, y, x + w, y + h]
        for x, y, w, h in (draw(st.tuples(coord, coord, sides, sides)) for _ in range(n))
    ]
    return torch.tensor(rows, dtype=torch.float32)


def _permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- box coder
@FAST
@given(boxes(sides=st.floats(1.0, 1e4, width=32)), st.data())
def test_encode_decode_round_trip(anchors: torch.Tensor, data: st.DataObject) -> None:
    """Any gt within the coder's clamps (size ratio < e^DELTA_CLAMP, sides >= 1e-3 px) comes
    back; anchors are >= 1 px (real ones are >= 16)."""
    n = len(anchors)
    ratio = st.floats(0.05, 0.95 * math.exp(DELTA_CLAMP), allow_nan=False)
    shift = st.floats(-3, 3, allow_nan=False)
    params = torch.tensor([data.draw(st.tuples(ratio, ratio, shift, shift)) for _ in range(n)])
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx, cy = anchors[:, 0] + aw / 2 + params[:, 2] * aw, anchors[:, 1] + ah / 2 + params[:, 3] * ah
    gw, gh = params[:, 0] * aw, params[:, 1] * ah
    gt = torch.stack([cx - gw / 2, cy - gh / 2, cx + gw / 2, cy + gh / 2], dim=1)
    deltas = encode_boxes(gt.double(), anchors.double())
    assert torch.isfinite(deltas).all()
    back = decode_boxes(deltas, anchors.double())
    scale = torch.maximum(aw, ah).double()[:, None] * 10
    torch.testing.assert_close(back / scale, gt.double() / scale, atol=1e-6, rtol=1e-6)


@FAST
@given(boxes(), st.floats(-1e6, 1e6, allow_nan=False, width=32), st.integers(0, 3))
def test_decode_is_finite_and_ordered_for_wild_deltas(
    anchors: torch.Tensor, value: float, column: int
) -> None:
    deltas = torch.zeros(len(anchors), 4)
    deltas[:, column] = value
    out = decode_boxes(deltas, anchors)
    assert torch.isfinite(out).all()
    assert (out[:, 2] >= out[:, 0]).all() and (out[:, 3] >= out[:, 1]).all()


@FAST
@given(boxes(), st.floats(0, 1e4, allow_nan=False, width=32))
def test_encode_is_finite_for_degenerate_gt(anchors: torch.Tensor, x: float) -> None:
    gt = torch.tensor([[x, x, x, x]]).expand(len(anchors), 4)  # zero width and height
    assert torch.isfinite(encode_boxes(gt, anchors)).all()


# ----------------------------------------------------------------------------- IoU
@FAST
@given(boxes(), boxes(), st.integers(0, 2**16))
def test_iou_range_symmetry_and_permutation(a: torch.Tensor, b: torch.Tensor, seed: int) -> None:
    iou = _batched_iou(a, b[None])[0]  # (n, m), as anchor assignment computes it
    assert torch.isfinite(iou).all() and (iou >= 0).all() and (iou <= 1 + 1e-6).all()
    torch.testing.assert_close(iou, box_iou(b, a).T)
    pa, pb = _permutation(len(a), seed), _permutation(len(b), seed + 1)
    torch.testing.assert_close(_batched_iou(a[pa], b[pb][None])[0], iou[pa][:, pb])
    assert torch.allclose(torch.diagonal(box_iou(a, a)), torch.ones(len(a)), atol=1e-4)


@FAST
@given(boxes(), st.data())
def test_aligned_iou_matches_pairwise_and_tolerates_degenerate_boxes(
    a: torch.Tensor, data: st.DataObject
) -> None:
    b = data.draw(boxes(len(a), len(a)))
    torch.testing.assert_close(
        aligned_iou(a, b), torch.diagonal(box_iou(a, b)), atol=1e-5, rtol=1e-4
    )
    flat = a.clone()
    flat[:, 2] = flat[:, 0]  # zero width
    iou = aligned_iou(flat, flat)
    assert torch.isfinite(iou).all() and (iou >= 0).all() and (iou <= 1).all()


# ----------------------------------------------------------------------------- IoU-HLR
@st.composite
def positives(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ious, labels, gt_ids) of P positives on up to 6 objects, distinct IoUs in (0, 1]."""
    p = draw(st.integers(1, 24))
    ious = draw(st.lists(st.floats(2**-10, 1.0, width=32), min_size=p, max_size=p, unique=True))
    object_class = draw(st.lists(st.integers(0, 2), min_size=6, max_size=6))
    gt_ids = draw(st.lists(st.integers(0, 5), min_size=p, max_size=p))
    labels = [object_class[g] for g in gt_ids]
    return torch.tensor(ious), torch.tensor(labels), torch.tensor(gt_ids)


def _hlr_by_hand(ious: list[float], labels: list[int], gt_ids: list[int]) -> list[int]:
    """The paper's definition: rank by IoU within each object, then within the class by
    (local rank, IoU descending)."""
    local = {}
    for g in set(gt_ids):
        members = sorted((i for i, x in enumerate(gt_ids) if x == g), key=lambda i: -ious[i])
        local |= {i: r for r, i in enumerate(members)}
    rank = [0] * len(ious)
    for c in set(labels):
        members = [i for i, x in enumerate(labels) if x == c]
        for r, i in enumerate(sorted(members, key=lambda i: (local[i], -ious[i]))):
            rank[i] = r
    return rank


@FAST
@given(positives(), st.integers(0, 2**16))
def test_iou_hlr_matches_the_definition_and_follows_permutations(
    sample: tuple[torch.Tensor, torch.Tensor, torch.Tensor], seed: int
) -> None:
    ious, labels, gt_ids = sample
    rank = iou_hlr_rank(ious, labels, gt_ids)
    assert rank.tolist() == _hlr_by_hand(ious.tolist(), labels.tolist(), gt_ids.tolist())
    for c in labels.unique():  # a permutation of 0 .. n_c - 1 within each class
        assert sorted(rank[labels == c].tolist()) == list(range(int((labels == c).sum())))
    perm = _permutation(len(ious), seed)
    assert torch.equal(iou_hlr_rank(ious[perm], labels[perm], gt_ids[perm]), rank[perm])
    weights = isr_p_weights(ious, labels, gt_ids)
    assert torch.isfinite(weights).all() and (weights > 0).all() and (weights <= 1).all()


# ----------------------------------------------------------------------------- GHM bins
logits = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@st.composite
def classification(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, C) logits with extreme values, one-hot-ish targets, (N,) label weights."""
    n, c = draw(st.integers(1, 16)), draw(st.integers(1, 4))
    x = torch.tensor(draw(st.lists(logits, min_size=n * c, max_size=n * c))).view(n, c)
    t = torch.tensor(draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n * c, max_size=n * c)))
    w = torch.tensor(draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n)))
    return x, t.view(n, c), w


@FAST
@given(st.lists(st.floats(0, 1, width=32), min_size=1, max_size=64), st.integers(1, 30))
def test_ghm_bin_index_in_range_and_counts_add_up(g: list[float], bins: int) -> None:
    density = GradientDensity(bins, momentum=0.0)
    values = torch.tensor(g)
    valid = torch.arange(len(g)) % 3 != 0
    index = density.slot_index(values.clone(), valid, None)
    assert (index[valid] >= 0).all() and (index[valid] < bins).all()
    assert (index[~valid] == bins).all()  # the dump slot
    assert density.counts(index).sum() == valid.sum()


@FAST
@given(classification(), st.integers(0, 2**16))
def test_ghmc_finite_weights_sum_to_one_and_permutation_invariant(
    sample: tuple[torch.Tensor, torch.Tensor, torch.Tensor], seed: int
) -> None:
    x, t, w = sample
    loss = GHMC(bins=10, momentum=0.0)(x, t, w)
    assert torch.isfinite(loss) and loss >= 0
    weights = GHMC(bins=10, momentum=0.0).harmonizing_weights(x, t, w)
    valid = (w > 0).sum() * x.shape[1]
    if valid:  # tot / (density * n) summed over the counted elements is tot
        assert math.isclose(float(weights.sum()), float(valid), rel_tol=1e-4)
    perm = _permutation(len(x), seed)
    permuted = GHMC(bins=10, momentum=0.0)(x[perm], t[perm], w[perm])
    torch.testing.assert_close(permuted, loss, rtol=1e-4, atol=1e-6)


@FAST
@given(st.integers(1, 16), st.data(), st.integers(0, 2**16))
def test_ghmr_finite_nonnegative_and_permutation_invariant(
    n: int, data: st.DataObject, seed: int
) -> None:
    values = st.lists(logits, min_size=4 * n, max_size=4 * n)
    pred = torch.tensor(data.draw(values)).view(n, 4)
    target = torch.tensor(data.draw(values)).view(n, 4)
    w = torch.ones(n)
    loss = GHMR(momentum=0.0)(pred, target, w)
    assert torch.isfinite(loss) and loss >= 0
    perm = _permutation(n, seed)
    torch.testing.assert_close(
        GHMR(momentum=0.0)(pred[perm], target[perm], w), loss, rtol=1e-4, atol=1e-5
    )

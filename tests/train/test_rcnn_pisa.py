"""PISA for the R-CNN head: Score-HLR, ISR-N, the reference's sampler, ISR-P and softmax CARL,
on hand-worked examples (the arithmetic is in the comments) and against a plain loop."""

from __future__ import annotations

import math

import pytest
import torch

from train.losses.pisa import carl_loss
from train.rcnn.pisa import (
    isr_n_weights,
    keep_loss_sum,
    max_foreground_probability,
    nms_match_clusters,
    rcnn_isr_p_weights,
    regressed_ious,
    score_hlr_rank,
    score_hlr_sample,
    softmax_class_probability,
)

# Eight negatives: (name, box, score, predicted class). Overlaps (IoU, boxes 10 x 10 unless said):
#   A-B: 9*10 / (100 + 100 - 90) = 0.818;  A-E (E is 10 x 9): 90 / (100 + 90 - 90) = 0.9
#   C-D: 10*9 / 110 = 0.818;  P-Q: 0.818;  R is A's box exactly (IoU 1) but of class 1.
# Every other pair is apart (IoU 0).
NEGATIVES = [
    ("A", [0, 0, 10, 10], 0.90, 0),
    ("P", [50, 50, 60, 60], 0.95, 1),
    ("B", [1, 0, 11, 10], 0.80, 0),
    ("C", [20, 20, 30, 30], 0.70, 0),
    ("Q", [51, 50, 61, 60], 0.40, 1),
    ("D", [20, 21, 30, 31], 0.65, 0),
    ("R", [0, 0, 10, 10], 0.50, 1),
    ("E", [0, 0, 10, 9], 0.75, 0),
]
# Paper (per class). Class 0, by score: A .90 leads {A, B .80, E .75}; C .70 leads {C, D .65}.
#   Local ranks: A 0, B 1, E 2; C 0, D 1. Order by (local rank, score desc):
#   local 0: A .90, C .70 -> 0, 1; local 1: B .80, D .65 -> 2, 3; local 2: E -> 4.
#   (A plain score sort would give A 0, B 1, E 2, C 3, D 4.)
# Class 1: P .95 leads {P, Q .40}; R .50 alone. local 0: P, R -> 0, 1; local 1: Q -> 2.
# Rows: A, P, B, C, Q, D, R, E.
PAPER_RANK = [0, 0, 2, 1, 2, 3, 1, 4]
# Reference (all classes together). By score: P .95, A .90, B .80, E .75, C .70, D .65, R .50,
#   Q .40. P leads {P, Q}; A leads {A, B, E, R}; C leads {C, D}.
#   local 0: P .95, A .90, C .70 -> 0, 1, 2; local 1: B .80, D .65, Q .40 -> 3, 4, 5;
#   local 2: E -> 6; local 3: R -> 7.
# Rows: A, P, B, C, Q, D, R, E.
REFERENCE_RANK = [1, 0, 3, 2, 5, 4, 7, 6]


def _negatives() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    boxes = torch.tensor([n[1] for n in NEGATIVES], dtype=torch.float32)
    scores = torch.tensor([n[2] for n in NEGATIVES])
    labels = torch.tensor([n[3] for n in NEGATIVES])
    return boxes, scores, labels


def test_score_hlr_ranks_the_hand_worked_example() -> None:
    boxes, scores, labels = _negatives()
    rank = score_hlr_rank(boxes, scores, labels)
    assert rank.dtype == torch.int64
    assert rank.tolist() == PAPER_RANK


def test_score_hlr_reference_option_ranks_all_classes_together() -> None:
    boxes, scores, labels = _negatives()
    assert score_hlr_rank(boxes, scores, labels, per_class=False).tolist() == REFERENCE_RANK


def test_clusters_are_greedy_in_score_order_and_join_at_iou_equal_to_the_threshold() -> None:
    # X [0,0,10,10] .9; Y [0,0,10,5] .8: IoU 50/100 = 0.5 exactly -> joins X (>=, as nms_match).
    # Z [0,6,10,16] .7: IoU with Y 0 (no overlap), with X 4*10 / (100+100-40) = 0.25 -> leads.
    # W [0,5,10,15] .6: IoU with X 50/150 = 0.333, with Z 9*10/(100+100-90) = 0.818 -> Z's.
    # V [0,3,10,13] .95: leads first; IoU with X 70/130 = 0.538 -> V takes X, and with Y
    #   20/(100+50-20) = 0.154, W 80/120 = 0.667 -> V takes W; Z 70/130 = 0.538 -> V takes Z.
    # So without V: X {X, Y}, Z {Z, W}; with V leading: V {V, X, Z, W}, Y alone (X is no
    # longer free to lead it: suppressed boxes never lead).
    boxes = torch.tensor(
        [[0, 0, 10, 10], [0, 0, 10, 5], [0, 6, 10, 16], [0, 5, 10, 15]], dtype=torch.float32
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert nms_match_clusters(boxes, scores).tolist() == [0, 0, 2, 2]
    boxes = torch.cat([boxes, torch.tensor([[0.0, 3, 10, 13]])])
    scores = torch.cat([scores, torch.tensor([0.95])])
    assert nms_match_clusters(boxes, scores).tolist() == [4, 1, 4, 4, 4]
    groups = torch.tensor([0, 0, 0, 0, 1])  # V in another group: back to the first clusters
    assert nms_match_clusters(boxes, scores, groups=groups).tolist() == [0, 0, 2, 2, 4]


def test_a_box_matching_a_taken_box_and_a_later_leader_joins_the_leader() -> None:
    # 10 x 10 boxes along x; a shift of 3 gives IoU 70/130 = 0.538, 6 gives 0.25, 9 gives 0.05.
    # F at x=0 (.9), U at 3 (.8), L at 9 (.7), M at 6 (.6). F leads and takes U; L overlaps
    # neither F nor U, so it leads; M overlaps U and L (shift 3 each) but not F (shift 6):
    # U is taken, so M joins L. (The first box M overlaps is U, which leads nothing.)
    boxes = torch.tensor([[x, 0.0, x + 10, 10] for x in (0.0, 3, 9, 6)])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert nms_match_clusters(boxes, scores).tolist() == [0, 0, 2, 2]


@pytest.mark.parametrize(
    ("k", "bias", "expected"),
    [
        # Class 0 has n = 5: u = (5 - r) / 5 = 1, .8, .6, .4, .2 for r = 0..4 (A, C, B, D, E);
        # class 1 has n = 3: u = 1, 2/3, 1/3 for P, R, Q. k = 2, bias 0: w = u^2.
        # Rows: A, P, B, C, Q, D, R, E.
        (2.0, 0.0, [1.0, 1.0, 0.36, 0.64, 1 / 9, 0.16, 4 / 9, 0.04]),
        # k = 1, bias 0.2: w = 0.8 u + 0.2. B: .8*.6+.2 = .68; C: .84; D: .52; E: .36;
        # Q: .8/3 + .2 = .4667; R: 1.6/3 + .2 = .7333.
        (1.0, 0.2, [1.0, 1.0, 0.68, 0.84, 0.8 / 3 + 0.2, 0.52, 1.6 / 3 + 0.2, 0.36]),
    ],
)
def test_isr_n_weights_follow_the_paper(k: float, bias: float, expected: list[float]) -> None:
    boxes, scores, labels = _negatives()
    weights = isr_n_weights(boxes, scores, labels, k, bias)
    assert weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx(expected, abs=1e-6)


def test_isr_n_reference_grouping_uses_one_normalizer_for_all_classes() -> None:
    # One ranking over 8 negatives: u = (8 - r) / 8 with REFERENCE_RANK, k = 1, bias 0.
    #   A r=1 -> 7/8, P 0 -> 1, B 3 -> 5/8, C 2 -> 6/8, Q 5 -> 3/8, D 4 -> 4/8, R 7 -> 1/8, E 6 -> 2/8
    boxes, scores, labels = _negatives()
    weights = isr_n_weights(boxes, scores, labels, 1.0, 0.0, per_class=False)
    assert weights.tolist() == pytest.approx([7 / 8, 1, 5 / 8, 6 / 8, 3 / 8, 4 / 8, 1 / 8, 2 / 8])


def test_isr_n_score_threshold_option() -> None:
    # Threshold 0.5 (score > 0.5 is ranked): Q .40 and R .50 (equal: not above) are left out.
    # Class 0 is unchanged (n = 5); class 1 keeps only P: n = 1, w = 1. k = 2, bias 0.
    # Q and R get the smallest ranked weight, E's (.2^2 = .04).
    boxes, scores, labels = _negatives()
    weights = isr_n_weights(boxes, scores, labels, 2.0, 0.0, score_threshold=0.5)
    assert weights.tolist() == pytest.approx([1.0, 1.0, 0.36, 0.64, 0.04, 0.16, 0.04, 0.04])
    # Nothing above the threshold: nothing is ranked and every weight is 1.
    assert isr_n_weights(boxes, scores, labels, 2.0, 0.0, score_threshold=0.99).tolist() == [1] * 8


def test_images_are_never_clustered_together_and_rank_within_image_option() -> None:
    # Same box everywhere, class 0. Image 0: X .90, Y .86; image 1: Z .85.
    # Batch ranking: clusters {X, Y} and {Z}: local 0: X .90, Z .85 -> 0, 1; Y (local 1) -> 2.
    # Without image ids all three would form one cluster: X 0, Y 1, Z 2.
    # Per image: X 0, Y 1 in image 0; Z 0 in image 1.
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 3)
    scores = torch.tensor([0.90, 0.86, 0.85])
    labels = torch.zeros(3, dtype=torch.int64)
    images = torch.tensor([0, 0, 1])
    assert score_hlr_rank(boxes, scores, labels, image_ids=images).tolist() == [0, 2, 1]
    assert score_hlr_rank(boxes, scores, labels).tolist() == [0, 1, 2]
    ranks = score_hlr_rank(boxes, scores, labels, image_ids=images, rank_within_image=True)
    assert ranks.tolist() == [0, 1, 0]
    # Weights per image: image 0 n = 2 -> u = 1, 1/2; image 1 n = 1 -> u = 1 (k = 1, bias 0).
    weights = isr_n_weights(
        boxes, scores, labels, 1.0, 0.0, image_ids=images, rank_within_image=True
    )
    assert weights.tolist() == pytest.approx([1.0, 0.5, 1.0])


def test_reference_sampler_keeps_the_best_ranked() -> None:
    # Threshold 0.5: ranked are A, P, B, C, D, E (6); Q (4) and R (6) are below it.
    # All classes together: P leads {P}; A leads {A, B, E}; C leads {C, D}.
    # local 0: P .95, A .90, C .70 -> 0, 1, 2; local 1: B .80, D .65 -> 3, 4; E -> 5.
    # num_expected 4: P, A, C, B (indices 1, 0, 3, 2); m = max(4, 6) = 6,
    #   u = 6/6, 5/6, 4/6, 3/6; k = 0.5, bias 0: w = sqrt(u).
    boxes, scores, _ = _negatives()
    indices, weights = score_hlr_sample(boxes, scores, 4, score_threshold=0.5)
    assert indices.tolist() == [1, 0, 3, 2]
    assert weights.tolist() == pytest.approx([1.0, math.sqrt(5 / 6), math.sqrt(4 / 6), 0.5**0.5])


def test_reference_sampler_fills_up_with_below_threshold_negatives() -> None:
    # num_expected 7 > 6 ranked: all six (order P, A, C, B, D, E = 1, 0, 3, 2, 5, 7), then one of
    # Q, R at random. m = max(7, 6) = 7: u = 1, 6/7, 5/7, 4/7, 3/7, 2/7; the fill gets 2/7.
    boxes, scores, _ = _negatives()
    generator = torch.Generator().manual_seed(0)
    indices, weights = score_hlr_sample(
        boxes, scores, 7, k=1.0, score_threshold=0.5, generator=generator
    )
    assert indices[:6].tolist() == [1, 0, 3, 2, 5, 7]
    assert indices[6].item() in (4, 6)
    assert weights.tolist() == pytest.approx([1, 6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7, 2 / 7])
    # No negative above the threshold: a random choice, all weights 1.
    indices, weights = score_hlr_sample(boxes, scores, 3, score_threshold=0.99)
    assert indices.unique().numel() == 3
    assert weights.tolist() == [1.0, 1.0, 1.0]


def test_keep_loss_sum_rescales_with_a_detached_factor() -> None:
    # sum L = 2 + 4 + 8 = 14; sum w L = 2 + 2 + 2 = 6; factor 14 / 6 = 7/3:
    # w' = 7/3, 7/6, 7/12 and sum w' L = 14/3 + 14/3 + 14/3 = 14.
    loss = torch.tensor([2.0, 4.0, 8.0], requires_grad=True)
    weights = keep_loss_sum(torch.tensor([1.0, 0.5, 0.25]), loss)
    assert weights.tolist() == pytest.approx([7 / 3, 7 / 6, 7 / 12])
    total = (weights * loss).sum()
    assert total.item() == pytest.approx(14.0)
    # Detached factor: d total / d L_i = w'_i. (Through the factor it would be 1 for every i.)
    total.backward()
    assert loss.grad.tolist() == pytest.approx([7 / 3, 7 / 6, 7 / 12])


def test_isr_n_rescaled_keeps_the_negatives_cross_entropy_sum() -> None:
    boxes, scores, labels = _negatives()
    logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(3))
    background = torch.full((8,), 2)
    loss = torch.nn.functional.cross_entropy(logits, background, reduction="none")
    weights = keep_loss_sum(isr_n_weights(boxes, scores, labels, 2.0, 0.0), loss)
    assert (weights * loss).sum().item() == pytest.approx(loss.sum().item(), rel=1e-6)


def test_ties_go_to_the_earlier_row_and_are_deterministic() -> None:
    # Equal scores .5, class 0: X and Y the same box, Z apart. Score order (stable): X, Y, Z.
    # X leads {X, Y}; Z leads {Z}. local 0: X, Z (tie -> input order) -> 0, 1; Y -> 2.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40]])
    scores = torch.full((3,), 0.5)
    labels = torch.zeros(3, dtype=torch.int64)
    assert score_hlr_rank(boxes, scores, labels).tolist() == [0, 2, 1]
    # Z first: Z, X, Y in score order; local 0: Z, X -> 0, 1; Y -> 2.
    moved = torch.tensor([2, 0, 1])
    assert score_hlr_rank(boxes[moved], scores, labels).tolist() == [0, 1, 2]
    for _ in range(3):
        assert score_hlr_rank(boxes, scores, labels).tolist() == [0, 2, 1]


def test_equal_scores_let_the_earlier_row_lead_a_cluster_in_a_longer_list() -> None:
    # All 20 scores .5 (long enough that an unstable sort reorders equal keys). A chain:
    # X [0,0,10,10] at row 0, Z [6,0,16,10] at row 1, Y [3,0,13,10] at row 10: X-Y and Y-Z
    # overlap 70/130 = 0.538, X-Z 40/160 = 0.25; the other 17 rows lie apart from everything.
    # X (first row) leads {X, Y}; Z then leads itself, Y being taken.
    # local 0: rows 0..9 and 11..19 in input order -> ranks 0..18; Y (local 1) -> 19.
    boxes = torch.tensor([[100.0 * i, 100, 100 * i + 10, 110] for i in range(20)])
    boxes[0] = torch.tensor([0.0, 0, 10, 10])
    boxes[1] = torch.tensor([6.0, 0, 16, 10])
    boxes[10] = torch.tensor([3.0, 0, 13, 10])
    scores = torch.full((20,), 0.5)
    labels = torch.zeros(20, dtype=torch.int64)
    expected = [*range(10), 19, *range(10, 19)]
    assert score_hlr_rank(boxes, scores, labels).tolist() == expected


def test_a_zero_area_box_forms_its_own_cluster() -> None:
    # [5,5,5,5] has no area: its IoU with anything, itself included, is 0; it still leads its
    # own cluster. [0,0,10,10] contains it and leads the other one.
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 5, 5]])
    assert nms_match_clusters(boxes, torch.tensor([0.9, 0.8])).tolist() == [0, 1]


def test_keep_loss_sum_leaves_the_weights_when_there_is_no_loss() -> None:
    # sum w L = 0: no factor can restore a sum of 0; the weights stay as they are (not NaN).
    weights = torch.tensor([1.0, 0.5])
    assert keep_loss_sum(weights, torch.zeros(2)).tolist() == [1.0, 0.5]


def test_empty_input() -> None:
    boxes, scores, labels = torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    assert score_hlr_rank(boxes, scores, labels).shape == (0,)
    assert score_hlr_rank(boxes, scores, labels).dtype == torch.int64
    assert isr_n_weights(boxes, scores, labels, 2.0, 0.0).shape == (0,)
    assert isr_n_weights(boxes, scores, labels, 2.0, 0.0, score_threshold=0.05).shape == (0,)
    indices, weights = score_hlr_sample(boxes, scores, 4)
    assert indices.shape == (0,) and weights.shape == (0,)
    assert keep_loss_sum(torch.zeros(0), torch.zeros(0)).shape == (0,)
    assert nms_match_clusters(boxes, scores).shape == (0,)


def test_max_foreground_probability_ignores_background() -> None:
    # Probabilities (rows): [.2, .1, .7] -> background largest, foreground best class 0 (.2);
    # [.3, .6, .1] -> class 1 (.6).
    probs = torch.tensor([[0.2, 0.1, 0.7], [0.3, 0.6, 0.1]])
    scores, labels = max_foreground_probability(probs.log())
    assert scores.tolist() == pytest.approx([0.2, 0.6])
    assert labels.tolist() == [0, 1]


# Positives: (IoU of the regressed box, class, object, softmax CE loss).
# Class 0: object 0 has .9 (local 0) and .6 (local 1); object 1 has .7 (local 0).
#   Ranks: local 0: .9 -> 0, .7 -> 1; local 1: .6 -> 2.  Class 1: object 2: .8 -> 0, .5 -> 1.
POSITIVES = [
    (0.9, 0, 0, 0.2),
    (0.6, 0, 0, 1.0),
    (0.7, 0, 1, 0.5),
    (0.8, 1, 2, 0.4),
    (0.5, 1, 2, 2.8),
]


def _positives() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    columns = list(zip(*POSITIVES, strict=True))
    return (
        torch.tensor(columns[0]),
        torch.tensor(columns[1]),
        torch.tensor(columns[2]),
        torch.tensor(columns[3]),
    )


def test_rcnn_isr_p_weights_keep_the_positives_loss_sum() -> None:
    # "class" (paper): class 0 n = 3 -> u = 1, 1/3, 2/3; class 1 n = 2 -> u = 1, 1/2. k = 2:
    #   w = 1, 1/9, 4/9, 1, 1/4. sum CE = 0.2 + 1 + 0.5 + 0.4 + 2.8 = 4.9;
    #   sum w CE = 0.2 + 1/9 + 2/9 + 0.4 + 0.7 = 49/30; factor 4.9 / (49/30) = 3.
    ious, labels, gt_ids, ce = _positives()
    weights = rcnn_isr_p_weights(ious, labels, gt_ids, ce)
    assert weights.tolist() == pytest.approx([3.0, 1 / 3, 4 / 3, 3.0, 0.75])
    # "global" (reference): M = 3 for both classes: class 1 u = 1, 2/3 -> w = 1, 4/9.
    #   sum w CE = 14/15 + 2.8 * 4/9 = 98/45; factor 4.9 * 45 / 98 = 2.25.
    weights = rcnn_isr_p_weights(ious, labels, gt_ids, ce, normalizer="global")
    assert weights.tolist() == pytest.approx([2.25, 0.25, 1.0, 2.25, 1.0])
    assert (weights * ce).sum().item() == pytest.approx(4.9)


def test_regressed_ious_take_the_box_of_the_positive_s_class() -> None:
    # Object [0,0,10,10]. Class 0's box is the object (IoU 1), class 1's is [0,0,10,5] (IoU .5).
    pred = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 5]]] * 2)  # (2 positives, K = 2, 4)
    gt = torch.tensor([[0.0, 0, 10, 10]] * 2)
    assert regressed_ious(pred, torch.tensor([1, 0]), gt).tolist() == pytest.approx([0.5, 1.0])
    assert regressed_ious(pred[:, 1], torch.tensor([1, 0]), gt).tolist() == pytest.approx(
        [0.5, 0.5]
    )


def test_carl_with_softmax_probabilities() -> None:
    # K = 2 (+ background). Softmax rows [.5,.25,.25] label 0, [.2,.6,.2] label 1,
    # [.1,.1,.8] label 0 -> p = .5, .6, .1 (a sigmoid of the same logits would give 1/3 for .5).
    # CARL k = 1, bias .2: v = .8 p + .2 = .60, .68, .28; mean .52; c = v / .52.
    # L = 1, .5, 2: sum c L = (.6 + .34 + .56) / .52 = 1.5 / .52; / avg_factor.
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]])
    logits = probs.log().requires_grad_()
    labels = torch.tensor([0, 1, 0])
    p = softmax_class_probability(logits, labels)
    assert p.tolist() == pytest.approx([0.5, 0.6, 0.1])
    reg = torch.tensor([1.0, 0.5, 2.0])
    loss = carl_loss(p, reg, k=1.0, bias=0.2)  # avg_factor: the 3 positives
    assert loss.item() == pytest.approx(1.5 / 0.52 / 3)
    # The reference's normalization: all sampled RoIs, say 8.
    assert carl_loss(p, reg, avg_factor=8).item() == pytest.approx(1.5 / 0.52 / 8)
    loss.backward()  # the regression loss reaches the classifier through the softmax
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# ---- against a plain loop ----


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _loop_score_hlr(boxes, scores, labels, images, per_class, threshold=0.5) -> list[int]:
    """Score-HLR written out: per class, greedy clusters, local ranks, then the class order."""
    n = len(scores)
    classes = labels if per_class else [0] * n
    rank = [0] * n
    for c in set(classes):
        members = sorted((i for i in range(n) if classes[i] == c), key=lambda i: (-scores[i], i))
        local: dict[int, int] = {}
        for i in members:  # in score order: i is free -> it leads a cluster
            if i in local:
                continue
            cluster = [i]
            for j in members:
                same_image = images[j] == images[i]
                if (
                    j not in local
                    and j != i
                    and same_image
                    and _iou(boxes[i], boxes[j]) >= threshold
                ):
                    cluster.append(j)
            for position, j in enumerate(cluster):
                local[j] = position
        ordered = sorted(members, key=lambda i: (local[i], -scores[i], i))
        for position, i in enumerate(ordered):
            rank[i] = position
    return rank


@pytest.mark.parametrize("per_class", [True, False])
def test_score_hlr_matches_a_plain_loop_on_random_negatives(per_class: bool) -> None:
    generator = torch.Generator().manual_seed(7)
    n = 300
    centres = torch.rand(12, 2, generator=generator) * 200  # few centres: many overlaps
    xy = centres[torch.randint(0, 12, (n,), generator=generator)]
    xy = xy + torch.randn(n, 2, generator=generator) * 6
    size = 20 + torch.rand(n, 2, generator=generator) * 20
    boxes = torch.cat([xy, xy + size], dim=1)
    scores = torch.rand(n, generator=generator)
    labels = torch.randint(0, 3, (n,), generator=generator)
    images = torch.randint(0, 2, (n,), generator=generator)
    expected = _loop_score_hlr(
        boxes.tolist(), scores.tolist(), labels.tolist(), images.tolist(), per_class
    )
    rank = score_hlr_rank(boxes, scores, labels, image_ids=images, per_class=per_class)
    assert rank.tolist() == expected
    # And the weights: u = (n_c - r) / n_c with n_c the size of the ranking, k = 2, bias 0.1.
    classes = labels.tolist() if per_class else [0] * n
    sizes = [classes.count(c) for c in classes]
    loop_weights = [(0.9 * (s - r) / s + 0.1) ** 2 for s, r in zip(sizes, expected, strict=True)]
    weights = isr_n_weights(boxes, scores, labels, 2.0, 0.1, image_ids=images, per_class=per_class)
    assert weights.tolist() == pytest.approx(loop_weights, rel=1e-5)

"""PISA for the R-CNN head (Cao et al., "Prime Sample Attention in Object Detection", CVPR 2020,
arXiv 1904.04821): Score-HLR and ISR-N for the sampled negative RoIs, ISR-P and CARL with
softmax scores for the positive ones. Pure tensor functions; the one-stage pieces they build
on (`iou_hlr_rank`, `isr_p_weights`, `carl_loss`, `aligned_iou`) live in train/losses/pisa.py.

Conventions: K foreground classes 0..K-1, background K; the head's logits are (N, K+1) and its
probabilities a softmax over all K+1 columns.

Score-HLR (the negatives' importance rank). A negative's score is its largest foreground
probability and its class the class of that probability (`max_foreground_probability`).
1. Cluster: among the negatives of one class, the highest-scoring one not yet in a cluster
   starts a cluster and takes every other free negative whose box overlaps it with
   IoU >= iou_threshold (0.5); repeat until all are placed (NMS, keeping the suppressed).
2. Local rank: position within the cluster by score, best first.
3. Order the class's negatives by local rank, then by score descending; the position is the
   rank r (0 = most important). This is IoU-HLR with clusters for objects and scores for IoUs,
   so it is computed by `iou_hlr_rank`.
Ties (equal scores) go to the earlier input row, in the clustering and in both sorts.

ISR-N: u = (n - r) / n with n the number of ranked negatives of the class, w = ((1 - bias) u +
bias)^k, then w' = w * sum(L) / sum(w L) over the negatives (`keep_loss_sum`, factor detached)
so that the negatives' classification loss keeps its value and only its distribution changes.

ISR-P for the R-CNN head is the one-stage ISR-P on the positive RoIs (IoU of the box regressed
for the positive's own class with its object), rescaled to keep the positives' softmax
cross-entropy sum (`rcnn_isr_p_weights`). CARL needs nothing new: `carl_loss` takes the softmax
probability of each positive's class (`softmax_class_probability`).

Where mmdetection's ScoreHLRSampler (the reference) differs from the paper as summarized to us,
that reading is the default and the reference an option (the paper's section 3 itself could not
be read here; docs/two-stage-pisa.md says which parts are unchecked):
- Grouping: the paper ranks each predicted class's negatives separately; the reference clusters
  and ranks all negatives together, whatever their class. Option `per_class=False`.
- Scope: the ranking here covers the whole mini-batch, as IoU-HLR does (clusters never cross
  images when `image_ids` is given); the reference's sampler runs image by image. Option
  `rank_within_image=True` (or call once per image).
- Score threshold: the paper ranks every negative; the reference ranks only those with score >
  0.05 and gives the others the smallest weight of the ranked ones (all weights 1 when none is
  ranked). Option `score_threshold`.
- Selection and normalizer: the paper re-weights the negatives the sampler drew; the reference
  *samples* by rank: from all of an image's negatives it keeps the num_expected best ranked
  (filling up at random with below-threshold ones), with u = (m - r) / m, m = max(num_expected,
  number ranked), so its weights never fall far below 1. That whole sampler is
  `score_hlr_sample`.
- k and bias: the reference's sampler uses k = 0.5, bias = 0 (its ISR-P uses k = 2); they are
  required arguments of `isr_n_weights` and the defaults of `score_hlr_sample` only.
- Boxes: the reference clusters the boxes regressed with each negative's predicted class; the
  functions here cluster whatever boxes they are given, so pass those for parity.
- Ties: the reference sorts unstably and ranks by the float key n - local rank + score, which
  drops score differences below float32 resolution; here sorts are exact and stable.
The clustering matches mmcv's nms_match: IoU >= threshold joins, no +1 in box sizes.
"""

from __future__ import annotations

import torch

from train.losses.pisa import aligned_iou, iou_hlr_rank, isr_p_weights


def max_foreground_probability(cls_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K+1) logits -> the (N,) largest foreground softmax probability and its (N,) class.

    The negatives' score and predicted class for Score-HLR; background (the last column) takes
    part in the softmax but is never the predicted class. Detached: ranks carry no gradient.
    """
    probs = torch.softmax(cls_logits.detach().to(torch.float32), dim=-1)[:, :-1]
    scores, labels = probs.max(dim=-1)
    return scores, labels


def _pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """(N, N) IoU of xyxy boxes, without the +1 pixel convention (as mmcv's nms_match)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    width = (torch.minimum(x2[:, None], x2) - torch.maximum(x1[:, None], x1)).clamp_(min=0)
    height = (torch.minimum(y2[:, None], y2) - torch.maximum(y1[:, None], y1)).clamp_(min=0)
    inter = width.mul_(height)
    area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    union = (area[:, None] + area) - inter
    return inter / union.clamp_(min=1e-6)


def nms_match_clusters(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float = 0.5,
    *,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N,) int64 cluster of each box: the input index of the box that leads its cluster.

    Greedy, in score order (ties: input order): the first free box leads a cluster and takes
    every free box with IoU >= iou_threshold; a box overlapping several leaders joins the
    highest-scoring one. `groups` (N,) clusters each group (class, image) on its own.
    """
    if groups is None:
        return _greedy_clusters(boxes, scores, iou_threshold)
    clusters = torch.empty(scores.numel(), dtype=torch.int64)
    for group in torch.unique(groups):
        rows = (groups == group).nonzero().squeeze(1)
        clusters[rows] = rows[_greedy_clusters(boxes[rows], scores[rows], iou_threshold)]
    return clusters


def _greedy_clusters(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """`nms_match_clusters` of one group, in rounds rather than box by box (`_settle_round`)."""
    n = scores.numel()
    order = torch.argsort(scores, descending=True, stable=True)
    match = _pairwise_iou(boxes[order].to(torch.float32)) >= iou_threshold
    # A box matches itself, even a degenerate (zero-area) one: its first match is then never a
    # later box, so row j's first candidate is the box that may lead j.
    match.fill_diagonal_(True)
    leader = torch.full((n,), -1, dtype=torch.int64)
    leads = torch.zeros(n, dtype=torch.bool)
    free = torch.ones(n, dtype=torch.bool)
    while bool(free.any()):
        _settle_round(match, free, leads, leader)
    clusters = torch.empty(n, dtype=torch.int64)
    clusters[order] = order[leader]
    return clusters


def _settle_round(
    match: torch.Tensor, free: torch.Tensor, leads: torch.Tensor, leader: torch.Tensor
) -> None:
    """Settle every free box whose greedy outcome is already certain; updates the last three.

    A free box is decided by its first match (itself included) among the boxes still free or
    already leading (a box that joined a cluster can take no other): if that is itself, no
    leader can take it and it leads; if that leads, it joins it, as no box before can lead it
    any more. The first free box is always decided, so every round settles at least one box:
    the result of the one-box-at-a-time loop, in far fewer rounds.
    """
    candidates = free | leads
    first = torch.argmax((match & candidates[None, :]).to(torch.uint8), dim=1)
    positions = torch.arange(free.numel())
    leads |= free & (first == positions)
    settled = free & leads[first]
    leader[settled] = first[settled]
    free &= ~settled


def _combine(major: torch.Tensor | None, minor: torch.Tensor) -> torch.Tensor:
    """One non-negative id per (major, minor) pair: groups by image and class at once."""
    if major is None:
        return minor
    return major.to(torch.int64) * (int(minor.max()) + 1) + minor


def _ranking_groups(
    labels: torch.Tensor,
    image_ids: torch.Tensor | None,
    per_class: bool,
    rank_within_image: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cluster groups, rank groups): clusters never cross images or (per class) classes;
    ranks run per class over the batch, or per image and class with rank_within_image."""
    classes = labels.to(torch.int64) if per_class else torch.zeros_like(labels, dtype=torch.int64)
    cluster_groups = _combine(image_ids, classes)
    rank_groups = cluster_groups if rank_within_image else classes
    return cluster_groups, rank_groups


def score_hlr_rank(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    iou_threshold: float = 0.5,
    *,
    image_ids: torch.Tensor | None = None,
    per_class: bool = True,
    rank_within_image: bool = False,
) -> torch.Tensor:
    """(N,) int64 Score-HLR of each negative within its class (0 = most important).

    boxes (N, 4) xyxy, scores (N,) largest foreground probability, labels (N,) predicted
    foreground class, image_ids (N,) optional. per_class=False: one ranking for all classes
    (reference); rank_within_image=True: one per image (reference). Module docstring: details.
    """
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    cluster_groups, rank_groups = _ranking_groups(labels, image_ids, per_class, rank_within_image)
    clusters = nms_match_clusters(boxes, scores, iou_threshold, groups=cluster_groups)
    return iou_hlr_rank(scores.detach().to(torch.float32), rank_groups, clusters)


def _group_sizes(groups: torch.Tensor) -> torch.Tensor:
    """(N,) number of elements sharing each element's group."""
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    return counts[inverse]


def _isr_mapping(importance: torch.Tensor, k: float, bias: float) -> torch.Tensor:
    """ISR's map from importance u = (n - r) / n in (0, 1] to weight ((1 - bias) u + bias)^k."""
    return ((1 - bias) * importance + bias).pow(k)


def isr_n_weights(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    k: float,
    bias: float,
    iou_threshold: float = 0.5,
    *,
    image_ids: torch.Tensor | None = None,
    per_class: bool = True,
    rank_within_image: bool = False,
    score_threshold: float | None = None,
) -> torch.Tensor:
    """(N,) ISR-N weights of the negatives, before the loss-sum rescale (`keep_loss_sum`).

    w = ((1 - bias) u + bias)^k, u = (n - r) / n, r the Score-HLR and n the number of ranked
    negatives sharing its ranking. score_threshold (reference: 0.05): only negatives scoring
    above it are ranked; the others get the smallest ranked weight, and all get 1 if none is
    ranked. The reference's k = 0.5, bias = 0.
    """
    weights = torch.ones(scores.numel(), dtype=torch.float32)
    ranked = torch.ones_like(weights, dtype=torch.bool)
    if score_threshold is not None:
        ranked = scores > score_threshold
    rows = ranked.nonzero().squeeze(1)
    if rows.numel() == 0:
        return weights
    ids = None if image_ids is None else image_ids[rows]
    rank = score_hlr_rank(
        boxes[rows],
        scores[rows],
        labels[rows],
        iou_threshold,
        image_ids=ids,
        per_class=per_class,
        rank_within_image=rank_within_image,
    )
    _, rank_groups = _ranking_groups(labels[rows], ids, per_class, rank_within_image)
    n = _group_sizes(rank_groups).to(torch.float32)
    ranked_weights = _isr_mapping((n - rank.to(torch.float32)) / n, k, bias)
    weights[rows] = ranked_weights
    weights[~ranked] = ranked_weights.min()
    return weights


def score_hlr_sample(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    num_expected: int,
    k: float = 0.5,
    bias: float = 0.0,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.05,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's ScoreHLRSampler on one image's negatives: (indices, weights).

    Ranks the negatives scoring above score_threshold all classes together, keeps the
    num_expected best, fills up with random below-threshold ones (weight: the smallest kept
    one), u = (m - r) / m with m = max(num_expected, number ranked). With no negative above the
    threshold: num_expected at random, weight 1. Weights are before `keep_loss_sum`.
    """
    num_expected = min(num_expected, scores.numel())
    valid = (scores > score_threshold).nonzero().squeeze(1)
    invalid = (scores <= score_threshold).nonzero().squeeze(1)
    if num_expected == 0:
        return valid[:0], torch.ones(0, dtype=torch.float32)
    if valid.numel() == 0:
        chosen = torch.randperm(scores.numel(), generator=generator)[:num_expected]
        return chosen, torch.ones(num_expected, dtype=torch.float32)
    no_classes = torch.zeros_like(valid)
    rank = score_hlr_rank(boxes[valid], scores[valid], no_classes, iou_threshold, per_class=False)
    best = torch.argsort(rank)[:num_expected]  # rank is a permutation of 0..num_valid-1
    fill = invalid[torch.randperm(invalid.numel(), generator=generator)]
    fill = fill[: num_expected - best.numel()]
    m = float(max(num_expected, valid.numel()))
    u = (m - rank[best].to(torch.float32)) / m
    u = torch.cat([u, u.min().expand(fill.numel())])
    return torch.cat([valid[best], fill]), _isr_mapping(u, k, bias)


def keep_loss_sum(weights: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """weights * sum(loss) / sum(weights * loss), the factor detached.

    ISR changes how the loss is spread over the samples, not its total: sum(w' L) == sum(L).
    loss (N,) per sample (or (N, C), summed over C). When the weighted sum is 0 the weights
    are returned unchanged.
    """
    per_sample = loss.detach().to(torch.float32)
    if per_sample.dim() > 1:
        per_sample = per_sample.sum(-1)
    weighted = (weights.detach() * per_sample).sum()
    if weighted <= 0:
        return weights
    return weights * (per_sample.sum() / weighted)


def own_class_boxes(boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(P, 4) box of each row's own class from class-specific (P, K, 4) boxes; (P, 4) as is."""
    if boxes.dim() == 2:
        return boxes
    return boxes[torch.arange(boxes.shape[0]), labels]


def regressed_ious(
    pred_boxes: torch.Tensor, labels: torch.Tensor, gt_boxes: torch.Tensor
) -> torch.Tensor:
    """(P,) IoU of each positive's regressed box (of its own class) with its object: IoU-HLR's key."""
    boxes = own_class_boxes(pred_boxes.detach().to(torch.float32), labels)
    return aligned_iou(boxes, gt_boxes.to(torch.float32))


def rcnn_isr_p_weights(
    ious: torch.Tensor,
    labels: torch.Tensor,
    gt_ids: torch.Tensor,
    cls_loss: torch.Tensor,
    k: float = 2.0,
    bias: float = 0.0,
    normalizer: str = "class",
) -> torch.Tensor:
    """(P,) ISR-P weights of the positive RoIs, rescaled so the positives' loss sum is kept.

    ious from `regressed_ious`; gt_ids unique across the batch; cls_loss (P,) each positive's
    softmax cross-entropy. normalizer "class" (paper) or "global" (reference), as `isr_p_weights`.
    """
    weights = isr_p_weights(ious.detach(), labels, gt_ids, k, bias, normalizer)
    return keep_loss_sum(weights, cls_loss)


def softmax_class_probability(cls_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(P,) softmax probability (over K+1 classes) of each row's label, with its gradient.

    CARL's score for the R-CNN head: pass it to `carl_loss` unchanged, which needs nothing else
    for two stages. For the reference's normalization pass avg_factor = the number of sampled
    RoIs (positives and negatives), as the head's regression loss uses.
    """
    probs = torch.softmax(cls_logits.to(torch.float32), dim=-1)
    return probs.gather(1, labels.to(torch.int64)[:, None]).squeeze(1)

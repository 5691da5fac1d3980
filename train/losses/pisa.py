"""Prime Sample Attention (Cao et al., CVPR 2020, arXiv 1904.04821): IoU-HLR, ISR-P and CARL.

Prime samples are the positives with the highest IoU to their object (IoU of the *regressed*
box), because they decide recall and precision at high IoU thresholds. IoU-HLR orders the
positives of each class: all objects' best sample first (sorted by IoU), then all second-best,
and so on. ISR-P turns that rank into a loss weight, CARL lets the regression loss supervise the
classification score.

Everything here is sorting and segment arithmetic over the positives at once: no loop over
classes or objects, no host syncs. Ties (equal IoU) are broken by position in the input (for the
detection loss: image, then level, location, anchor), so ranks are deterministic; the reference
implementation's unstable sort leaves them arbitrary.

`pisa-center` (ours; the article's "effective prime samples"): IoU-HLR over the effective IoU
    iou_eff = iou + center_margin * [anchor centre inside the ground-truth box]
(inclusive box edges), and at equal iou_eff the centre-inside sample ranks first. So, within an
object and across objects of a rank level, a sample whose anchor centre lies inside the object
outranks one whose centre lies outside unless the latter's IoU is more than `center_margin`
higher; with margin 0 only exact IoU ties are decided by the centre. CARL is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from train.assign import AnchorAssignment
from train.losses.base import option, positive_normalizer, selected_rows
from train.losses.focal import FocalDetectionLoss
from train.losses.regression import regression_on_rows
from train.model.box_coder import decode_boxes

NORMALIZERS = ("class", "global")
# Stands in for the class / object of rows outside `mask`: sorts after every real id, and
# label * (n + 1) + local rank stays far from int64 overflow.
_EXCLUDED = 2**31


def _run_starts(sorted_keys: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """For sorted keys, the position where each element's run of equal keys starts.

    cummax over "start positions or 0" rather than searchsorted: on CPU searchsorted always
    goes parallel, and waking threads costs more than the whole ranking at this size.
    """
    change = torch.ones_like(sorted_keys, dtype=torch.bool)
    change[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return torch.cummax(torch.where(change, position, torch.zeros_like(position)), 0).values


def _descending_order(ious: torch.Tensor, priority: torch.Tensor | None) -> torch.Tensor:
    """Permutation by IoU descending; equal IoU: higher priority first, then input order."""
    if priority is None:
        return torch.argsort(ious, descending=True, stable=True)
    order = torch.argsort(priority.to(torch.float32), descending=True, stable=True)
    return order[torch.argsort(ious[order], descending=True, stable=True)]


@dataclass
class _Ranking:
    """IoU-HLR of n elements: rank within class, and the class-major order it came from."""

    rank: torch.Tensor  # (n,) 0 = most important in its class
    order: torch.Tensor  # (n,) element indices, class-major, best first
    starts: torch.Tensor  # (n,) for each position of `order`, where its class's run starts

    def class_sizes(self) -> torch.Tensor:
        """(n,) number of elements in each element's class."""
        ones = torch.ones_like(self.starts)
        run_sizes = torch.zeros_like(self.starts).scatter_add_(0, self.starts, ones)
        sizes = torch.empty_like(self.starts)
        sizes[self.order] = run_sizes[self.starts]
        return sizes


def _hlr(
    ious: torch.Tensor,
    labels: torch.Tensor,
    gt_ids: torch.Tensor,
    priority: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> _Ranking:
    """IoU-HLR by three stable sorts: by IoU, then by object (giving each sample's local
    rank), then by (class, local rank) on the IoU order (giving the hierarchical order)."""
    n = ious.numel()
    position = torch.arange(n, device=ious.device)
    if mask is not None:  # excluded rows form their own trailing group
        labels = torch.where(mask, labels, torch.full_like(labels, _EXCLUDED))
        gt_ids = torch.where(mask, gt_ids, torch.full_like(gt_ids, _EXCLUDED))
    by_iou = _descending_order(ious.to(torch.float32), priority)
    grouped = by_iou[torch.argsort(gt_ids[by_iou], stable=True)]  # object-major, best IoU first
    local = torch.empty_like(position)
    local[grouped] = position - _run_starts(gt_ids[grouped], position)
    class_then_local = labels * (n + 1) + local
    ranked = by_iou[torch.argsort(class_then_local[by_iou], stable=True)]
    starts = _run_starts(labels[ranked], position)
    rank = torch.empty_like(position)
    rank[ranked] = position - starts
    return _Ranking(rank, ranked, starts)


def iou_hlr_rank(
    ious: torch.Tensor,
    labels: torch.Tensor,
    gt_ids: torch.Tensor,
    *,
    priority: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """IoU hierarchical local rank of each positive within its class (0 = most important).

    ious, labels, gt_ids: (P,) IoU of the regressed box with its object, class, object id; ids
    must identify objects across the whole batch (AnchorAssignment's do; the reference's
    per-image offsets collide, see the module docstring). Within each object, samples are ranked by IoU (local rank); the class's samples are then
    ordered by (local rank, IoU descending). Equal IoU: higher `priority` first (if given), then
    input order. `mask` (P,) bool marks the rows to rank; the others get arbitrary ranks (used to
    keep fixed shapes on GPU).
    """
    return _hlr(ious, labels, gt_ids, priority, mask).rank


def isr_p_weights(
    ious: torch.Tensor,
    labels: torch.Tensor,
    gt_ids: torch.Tensor,
    k: float = 2.0,
    bias: float = 0.0,
    normalizer: str = "class",
    *,
    priority: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(P,) un-normalized ISR-P weights w = ((1 - bias) u + bias)^k, u = (n - rank) / n.

    normalizer "class": n = n_j, the class's own positive count (the paper). "global": n = M,
    the largest per-class count in the batch for every class (the reference implementation).
    Rows outside `mask` get weight 0. The caller rescales so the positives' loss sum is kept.
    """
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer must be one of {NORMALIZERS}, not {normalizer!r}")
    ranking = _hlr(ious, labels, gt_ids, priority, mask)
    rank = ranking.rank
    if rank.numel() == 0:
        return ious.new_zeros(0, dtype=torch.float32)
    if normalizer == "global":  # M = the largest class size = the largest rank + 1
        real = rank if mask is None else torch.where(mask, rank, torch.zeros_like(rank))
        n = (real.max() + 1).to(torch.float32)
    else:
        n = ranking.class_sizes().to(torch.float32)
    weights = ((1 - bias) * (n - rank.to(torch.float32)) / n + bias).pow(k)
    return weights if mask is None else torch.where(mask, weights, torch.zeros_like(weights))


def carl_loss(
    scores: torch.Tensor,
    reg_loss: torch.Tensor,
    k: float = 1.0,
    bias: float = 0.2,
    avg_factor: float | torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    rescale: bool = False,
) -> torch.Tensor:
    """Classification-aware regression loss: sum_i c_i L_i / avg_factor.

    scores (P,): predicted probability of each positive's class; gradient flows into them, so
    the regression loss supervises the classifier. reg_loss (P,) or (P, 4). v = ((1 - b) p + b)^k,
    c = v / mean(v) (the mean is not detached, as in the reference). avg_factor None: P.
    rescale=True: the paper's c' = c * sum(L) / sum(c L) with that factor detached, so the loss
    value is sum(L) / avg_factor and only its gradient carries the classification awareness.
    `mask` (P,) bool limits everything to those rows.
    """
    per_sample = reg_loss.sum(-1) if reg_loss.dim() > 1 else reg_loss
    weights = ((1 - bias) * scores.to(torch.float32) + bias).pow(k)
    if mask is None:
        count = torch.full((), float(scores.numel()), device=scores.device)
    else:
        weights = torch.where(mask, weights, torch.zeros_like(weights))
        per_sample = torch.where(mask, per_sample, torch.zeros_like(per_sample))
        count = mask.sum().to(torch.float32)
    weights = weights * (count / weights.sum().clamp(min=1e-12))
    if rescale:
        with torch.no_grad():
            factor = per_sample.sum() / (weights * per_sample).sum().clamp(min=1e-12)
        weights = weights * factor
    avg = count.clamp(min=1.0) if avg_factor is None else avg_factor
    return (weights * per_sample).sum() / avg


def aligned_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """(P,) IoU of row i of (P, 4) boxes1 with row i of boxes2."""
    lt = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    rb = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(-1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(-1)
    return inter / (area1 + area2 - inter).clamp(min=1e-6)


@dataclass
class _Positives:
    """The selected rows of the flattened batch (`selected_rows`) and what PISA needs of them."""

    rows: torch.Tensor  # (S,) indices into B * N
    mask: torch.Tensor | None  # (S,) bool, True for real positives; None: all are
    labels: torch.Tensor
    gt_ids: torch.Tensor
    anchors: torch.Tensor  # (S, 4)
    gt_boxes: torch.Tensor  # (S, 4)

    def zero_outside(self, values: torch.Tensor) -> torch.Tensor:
        return values if self.mask is None else torch.where(self.mask, values, 0 * values)


def _positives(assignment: AnchorAssignment) -> _Positives:
    rows, mask = selected_rows(assignment.positive.reshape(-1))
    num_anchors = assignment.anchors.shape[0]
    return _Positives(
        rows=rows,
        mask=mask,
        labels=assignment.labels.reshape(-1)[rows],
        gt_ids=assignment.gt_ids.reshape(-1)[rows],
        anchors=assignment.anchors.to(torch.float32)[rows % num_anchors],
        gt_boxes=assignment.gt_boxes.reshape(-1, 4).to(torch.float32)[rows],
    )


@dataclass(kw_only=True)
class PisaDetectionLoss(FocalDetectionLoss):
    """Focal loss with ISR-P weights on the positives, + regression, + CARL (RetinaNet PISA)."""

    isr_k: float = option(2.0, "ISR-P exponent k (gamma in the paper)")
    isr_bias: float = option(0.0, "ISR-P bias: the smallest weight before normalization")
    isr_normalizer: str = option(
        "class",
        "ISR-P u = (n - r) / n with n per class (paper) | global M (reference)",
        NORMALIZERS,
    )
    carl_k: float = option(1.0, "CARL exponent k")
    carl_bias: float = option(0.2, "CARL bias b")
    carl_weight: float = option(1.0, "weight of the CARL part")
    carl_rescale: bool = option(False, "paper's c' rescaling (detached) instead of the reference's")

    def _ranking_keys(
        self, ious: torch.Tensor, pos: _Positives
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """IoU-HLR's sort key and tie priority: plain PISA ranks by IoU, input order at ties."""
        return ious, None

    def _isr_weights(
        self, box_deltas: torch.Tensor, pos: _Positives, pos_loss: torch.Tensor
    ) -> torch.Tensor:
        """(S,) ISR-P weights, rescaled so sum(w * loss) over the positives is unchanged."""
        with torch.no_grad():
            deltas = box_deltas.reshape(-1, 4)[pos.rows].to(torch.float32)
            ious = aligned_iou(decode_boxes(deltas, pos.anchors), pos.gt_boxes)
            keys, priority = self._ranking_keys(ious, pos)
            weights = isr_p_weights(
                keys,
                pos.labels,
                pos.gt_ids,
                self.isr_k,
                self.isr_bias,
                self.isr_normalizer,
                priority=priority,
                mask=pos.mask,
            )
            loss = pos.zero_outside(pos_loss.detach())
            return weights * (loss.sum() / (weights * loss).sum().clamp(min=1e-12))

    def __call__(
        self, cls_logits: torch.Tensor, box_deltas: torch.Tensor, assignment: AnchorAssignment
    ) -> dict[str, torch.Tensor]:
        num_classes = cls_logits.shape[-1]
        row_loss = self.classification_rows(cls_logits, assignment)
        pos = _positives(assignment)
        pos_loss = row_loss[pos.rows]
        isr = self._isr_weights(box_deltas, pos, pos_loss)
        normalizer = positive_normalizer(assignment, self.sync_normalizer)
        # Positives are always valid: reweighting them is adding (w - 1) * their row loss.
        valid = assignment.valid.reshape(-1)
        cls = torch.where(valid, row_loss, torch.zeros_like(row_loss)).sum()
        cls = cls + pos.zero_outside((isr - 1) * pos_loss).sum()
        reg = regression_on_rows(
            self.reg_loss, box_deltas, assignment, pos.rows, pos.mask, self.reg_beta, self.reg_mu
        )
        logits = cls_logits.reshape(-1, num_classes)[pos.rows, pos.labels.clamp(min=0)]
        carl = carl_loss(
            torch.sigmoid(logits.to(torch.float32)),
            reg,
            self.carl_k,
            self.carl_bias,
            normalizer,
            mask=pos.mask,
            rescale=self.carl_rescale,
        )
        return {
            "cls": cls / normalizer,
            "reg": self.reg_weight * reg.sum() / normalizer,
            "carl": self.carl_weight * carl,
        }


@dataclass(kw_only=True)
class PisaCenterDetectionLoss(PisaDetectionLoss):
    """PISA whose IoU-HLR prefers samples whose anchor centre lies inside the object.

    Ranks by iou + center_margin * [centre inside], centre-inside first at equal values (module
    docstring). Everything else is `pisa`.
    """

    center_margin: float = option(0.05, "IoU bonus of a centre-inside sample in IoU-HLR")

    def _ranking_keys(
        self, ious: torch.Tensor, pos: _Positives
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        centre = (pos.anchors[:, :2] + pos.anchors[:, 2:]) / 2
        inside = ((centre >= pos.gt_boxes[:, :2]) & (centre <= pos.gt_boxes[:, 2:])).all(dim=1)
        return ious + self.center_margin * inside.to(ious.dtype), inside

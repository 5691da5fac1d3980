"""Detection-level parity with mmdetection 3.3.0's own loss code (RetinaHead / PISARetinaHead).

The same anchors, ground truth (with an image without objects and one with a crowd region),
classification logits and box deltas go through mmdetection's `loss_by_feat` (its MaxIoUAssigner,
PseudoSampler, DeltaXYWHBBoxCoder and FocalLoss / GHMC+GHMR / ISR-P+CARL) and through our
`assign_anchors` + loss with the options that select the reference's behaviour
(docs/losses-and-formulas.md). Totals, each part and the gradients w.r.t. logits and deltas must
agree to 1e-5 relative. GHM runs three consecutive batches through the same loss objects, so the
EMA state is compared too. Logits and deltas are float64 leaves; mmdetection computes the losses
in float64 except its regression targets (bbox2delta casts to float32) and label weights
(float32); ours computes in float32 by design, so that is the precision of the comparison.

Differences the test accounts for, each asserted separately so a change on either side shows:
- normalizer: mmdet divides by sum over images of max(positives, 1) (SamplingResult.num_pos);
  ours by max(positives of the batch, 1) (the Focal Loss paper). They differ by one per image
  without positives; `test_normalizer_counts_empty_images_once` pins it and the batch with the
  empty image is compared after rescaling by that ratio (no option of ours reproduces it).
- PISA's CARL: the reference has no c' step, which is our default `carl_rescale=false`.

Skipped unless mmdetection 3.3.0 is importable or installed at MMDET_REFERENCE_PATH (default
the repository's .reference/, where `make reference` installs it): see tests/reference_mmdet.py and docs/reference-parity.md.
Run: .venv/bin/python -m pytest tests/train/test_reference_mmdet.py -m reference
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
import torch

from tests.reference_mmdet import INSTALL_RECIPE, load_mmdet
from train.assign import AnchorAssignment, assign_anchors
from train.losses import build_loss
from train.model.anchors import (
    ANCHORS_PER_LOCATION,
    AnchorSpec,
    default_anchor_scale,
    generate_anchors,
)

pytestmark = pytest.mark.reference

NUM_CLASSES = 3
IMG_SIZE = 64
STRIDES = (8, 16, 32)
ANCHOR_SCALE = default_anchor_scale(IMG_SIZE)  # 2.0: base sizes 16, 32, 64
REL = 1e-5


@functools.cache
def _mm():
    try:
        mm = load_mmdet()
    except ImportError as exc:
        pytest.skip(str(exc))
    if mm is None:
        pytest.skip(f"mmdetection 3.3.0 not installed; install it with: {INSTALL_RECIPE}")
    return mm


@pytest.fixture(scope="module")
def mm():
    return _mm()


# --- the problem ---------------------------------------------------------------------------

SPEC = AnchorSpec(img_size=IMG_SIZE, strides=STRIDES, anchor_scale=ANCHOR_SCALE)

# Boxes on a 0.25 grid, so float32 and float64 hold them exactly. Labels are chosen so that the
# reference's colliding per-image gt ids (docs: "gt ids across images") never merge two objects
# of one class: image 3's ids 0, 1 become 2, 3 there, which are image 0's object 2 (class 0) and
# image 2's object 0 (class 0); image 3's objects are classes 1 and 2.
IMAGES = [
    {  # several objects, two of class 1 (IoU-HLR local ranks), sizes across the levels
        "boxes": [[4.0, 6.0, 22.5, 20.0], [30.0, 28.0, 62.0, 60.0], [10.25, 34.0, 26.0, 58.5]],
        "labels": [1, 1, 0],
        "crowd": [],
    },
    {"boxes": [], "labels": [], "crowd": []},  # no objects at all
    {  # objects and a crowd region away from them
        "boxes": [[2.0, 2.0, 30.0, 26.0], [20.0, 24.0, 40.0, 36.0]],
        "labels": [0, 2],
        "crowd": [[40.0, 40.0, 64.0, 64.0]],
    },
    {
        "boxes": [[36.0, 4.0, 60.0, 30.0], [6.0, 40.0, 20.0, 52.0]],
        "labels": [1, 2],
        "crowd": [],
    },
]


@dataclass
class Problem:
    anchors: torch.Tensor  # (N, 4) float32, ours
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    crowd: list[torch.Tensor]
    feat_sizes: list[int]


def make_problem(images: list[dict]) -> Problem:
    return Problem(
        anchors=generate_anchors(SPEC),
        boxes=[torch.tensor(im["boxes"], dtype=torch.float32).reshape(-1, 4) for im in images],
        labels=[torch.tensor(im["labels"], dtype=torch.long) for im in images],
        crowd=[torch.tensor(im["crowd"], dtype=torch.float32).reshape(-1, 4) for im in images],
        feat_sizes=SPEC.feature_sizes(),
    )


def make_predictions(problem: Problem, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, C) logits and (B, N, 4) deltas, float64: mostly confident negatives, a spread of
    hard ones, small deltas (distinct, positive IoUs of the regressed boxes: no HLR ties)."""
    gen = torch.Generator().manual_seed(seed)
    batch, n = len(problem.boxes), problem.anchors.shape[0]
    logits = -4.0 + 2.5 * torch.randn(batch, n, NUM_CLASSES, generator=gen, dtype=torch.float64)
    deltas = 0.15 * torch.randn(batch, n, 4, generator=gen, dtype=torch.float64)
    return logits, deltas


def ours_assignment(problem: Problem) -> AnchorAssignment:
    return assign_anchors(problem.anchors, problem.boxes, problem.labels, problem.crowd)


def to_levels(flat: torch.Tensor, feat_sizes: list[int]) -> list[torch.Tensor]:
    """Our (B, N, K) (level, y, x, anchor order) -> mmdet's per-level (B, A*K, H, W) views.

    mmdet flattens a level with permute(0, 2, 3, 1).reshape(B, -1, K): index (y, x, anchor),
    channel a * K + k. Views of the same leaf, so gradients land on `flat`.
    """
    batch, _, k = flat.shape
    out, start = [], 0
    for s in feat_sizes:
        count = s * s * ANCHORS_PER_LOCATION
        level = flat[:, start : start + count].reshape(batch, s, s, ANCHORS_PER_LOCATION * k)
        out.append(level.permute(0, 3, 1, 2))
        start += count
    assert start == flat.shape[1]
    return out


# --- mmdetection's side --------------------------------------------------------------------

ANCHOR_GENERATOR = {
    "type": "AnchorGenerator",
    "octave_base_scale": ANCHOR_SCALE,
    "scales_per_octave": 3,
    "ratios": [0.5, 1.0, 2.0],
    "strides": list(STRIDES),
    # ours centres anchors at (i + 0.5) * stride; mmdet's default offset 0 puts them at i * stride
    "center_offset": 0.5,
}
TRAIN_CFG = {
    "assigner": {
        "type": "MaxIoUAssigner",
        "pos_iou_thr": 0.5,
        "neg_iou_thr": 0.4,
        "min_pos_iou": 0,
        "ignore_iof_thr": 0.5,  # ours: anchors > 50% inside a crowd box are ignored
        "ignore_wrt_candidates": True,  # iof = intersection / anchor area, as ours
    },
    "sampler": {"type": "PseudoSampler"},
    "allowed_border": -1,
    "pos_weight": -1,
    "debug": False,
}
FOCAL = {"type": "FocalLoss", "use_sigmoid": True, "gamma": 2.0, "alpha": 0.25, "loss_weight": 1.0}


def mm_head(mm, loss_cls: dict, loss_bbox: dict, pisa: bool = False):
    """RetinaHead (or PISARetinaHead) with no conv tower; its prior generator hands out our
    anchors exactly (after `test_anchor_generators_agree` has checked mmdet's own are equal)."""
    train_cfg = dict(TRAIN_CFG)
    cls = mm.RetinaHead
    if pisa:
        cls = mm.PISARetinaHead
        train_cfg["isr"] = {"k": 2.0, "bias": 0.0}
        train_cfg["carl"] = {"k": 1.0, "bias": 0.2}
    head = cls(
        num_classes=NUM_CLASSES,
        in_channels=4,
        stacked_convs=0,
        feat_channels=4,
        anchor_generator=ANCHOR_GENERATOR,
        bbox_coder={
            "type": "DeltaXYWHBBoxCoder",
            "target_means": [0.0, 0.0, 0.0, 0.0],
            "target_stds": [1.0, 1.0, 1.0, 1.0],
        },
        loss_cls=loss_cls,
        loss_bbox=loss_bbox,
        train_cfg=train_cfg,
    )
    # float32, as ours: mmdet's bbox2delta casts to float32 anyway, and its targets must fit
    ours = generate_anchors(SPEC)
    sizes = [s * s * ANCHORS_PER_LOCATION for s in SPEC.feature_sizes()]
    per_level = list(ours.split(sizes))
    head.prior_generator.grid_priors = lambda featmap_sizes, device="cpu", **kw: [
        a.to(device) for a in per_level
    ]
    return head


def mm_inputs(mm, problem: Problem):
    gts, ignores, metas = [], [], []
    for boxes, labels, crowd in zip(problem.boxes, problem.labels, problem.crowd, strict=True):
        # float32 like mmdet's own data pipeline (and our assignment): IoU ties stay ties
        gts.append(mm.InstanceData(bboxes=boxes.clone(), labels=labels.clone()))
        ignores.append(mm.InstanceData(bboxes=crowd.clone()))
        metas.append({"img_shape": (IMG_SIZE, IMG_SIZE), "pad_shape": (IMG_SIZE, IMG_SIZE)})
    return gts, metas, ignores


def mm_loss(head, problem: Problem, logits: torch.Tensor, deltas: torch.Tensor) -> dict:
    """mmdet's loss_by_feat on leaves `logits`, `deltas` (ours' layout); parts summed over levels."""
    gts, metas, ignores = mm_inputs(_mm(), problem)
    raw = head.loss_by_feat(
        to_levels(logits, problem.feat_sizes),
        to_levels(deltas, problem.feat_sizes),
        gts,
        metas,
        batch_gt_instances_ignore=ignores,
    )
    parts = {}
    for key, value in raw.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        parts[key] = sum(v.sum() for v in values)
    return parts


def mm_normalizer(head, problem: Problem) -> float:
    """The avg_factor mmdet's heads divide by (from its own get_targets)."""
    gts, metas, ignores = mm_inputs(_mm(), problem)
    sizes = [torch.Size([s, s]) for s in problem.feat_sizes]
    anchors, valid = head.get_anchors(sizes, metas, device="cpu")
    return float(head.get_targets(anchors, valid, gts, metas, ignores)[4])


# --- comparison helpers --------------------------------------------------------------------


def leaves(logits: torch.Tensor, deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits.clone().requires_grad_(True), deltas.clone().requires_grad_(True)


def rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref| (normwise: elementwise relative error is meaningless for
    gradient entries that are 0 or ~1e-12 on one side and float32 round-off on the other)."""
    ours, ref = ours.detach().double(), ref.detach().double()
    scale = ref.abs().max().clamp(min=1e-30)
    return float((ours - ref).abs().max() / scale)


RESULTS: dict[str, float] = {}


def record(name: str, value: float) -> float:
    RESULTS[name] = max(RESULTS.get(name, 0.0), value)
    return value


def compare(
    name: str,
    ours_parts: dict[str, torch.Tensor],
    ref_parts: dict[str, torch.Tensor],
    part_map: dict[str, str],
    ours_leaves: tuple[torch.Tensor, torch.Tensor],
    ref_leaves: tuple[torch.Tensor, torch.Tensor],
    scale: float = 1.0,
) -> None:
    """Each part, the total and both gradients within REL. `scale` multiplies ours (normalizer)."""
    for our_key, ref_key in part_map.items():
        d = rel_diff(ours_parts[our_key] * scale, ref_parts[ref_key])
        assert record(f"{name}:{our_key}", d) < REL, (
            f"{name} {our_key}: ours {float(ours_parts[our_key]) * scale!r} "
            f"vs mmdet {ref_key} {float(ref_parts[ref_key])!r} (rel {d:.2e})"
        )
    ours_total = sum(ours_parts[k] for k in part_map) * scale
    ref_total = sum(ref_parts[k] for k in part_map.values())
    d = rel_diff(ours_total, ref_total)
    assert record(f"{name}:total", d) < REL, (
        f"{name} total: {float(ours_total)} vs {float(ref_total)}"
    )
    ours_total.backward()
    ref_total.backward()
    for what, ours_leaf, ref_leaf in zip(
        ("d logits", "d deltas"), ours_leaves, ref_leaves, strict=True
    ):
        assert ours_leaf.grad is not None and ref_leaf.grad is not None
        d = rel_diff(ours_leaf.grad, ref_leaf.grad)
        assert record(f"{name}:{what}", d) < REL, f"{name} {what}: rel {d:.2e}"


# --- tests ---------------------------------------------------------------------------------


def test_anchor_generators_agree(mm) -> None:
    """mmdet's AnchorGenerator (center_offset 0.5) gives our anchors in our order."""
    gen = mm_head(mm, FOCAL, {"type": "L1Loss", "loss_weight": 1.0}).prior_generator
    sizes = [torch.Size([s, s]) for s in SPEC.feature_sizes()]
    theirs = torch.cat(type(gen).grid_priors(gen, sizes, dtype=torch.float64, device="cpu"))
    ours = generate_anchors(SPEC).double()
    assert theirs.shape == ours.shape
    assert torch.allclose(theirs, ours, rtol=0, atol=1e-4), (theirs - ours).abs().max()


def test_assignment_agrees(mm) -> None:
    """Same positives, ignored anchors, labels and matched objects as MaxIoUAssigner."""
    problem = make_problem(IMAGES)
    ours = ours_assignment(problem)
    assigner = mm.MaxIoUAssigner(**{k: v for k, v in TRAIN_CFG["assigner"].items() if k != "type"})
    anchors = problem.anchors
    k_max = max(len(b) for b in problem.boxes)
    for i, (boxes, labels, crowd) in enumerate(
        zip(problem.boxes, problem.labels, problem.crowd, strict=True)
    ):
        res = assigner.assign(
            mm.InstanceData(priors=anchors),
            mm.InstanceData(bboxes=boxes, labels=labels),
            mm.InstanceData(bboxes=crowd),
        )
        positive = res.gt_inds > 0
        valid = res.gt_inds >= 0
        assert torch.equal(positive, ours.positive[i]), f"image {i}: positives differ"
        assert torch.equal(valid, ours.valid[i]), f"image {i}: ignored anchors differ"
        assert torch.equal(res.labels[positive], ours.labels[i][positive])
        assert torch.equal(res.gt_inds[positive] - 1 + i * k_max, ours.gt_ids[i][positive])
    assert int(ours.positive.sum()) > 20 and int((~ours.valid).sum()) > 20
    assert not ours.positive[1].any()  # the empty image
    crowd_ignored = ~ours.valid[2] & (ours.max_iou[2] < 0.4)
    assert crowd_ignored.any(), "the crowd region ignores some anchors"


# Where MaxIoUAssigner (RetinaNet config: min_pos_iou 0, gt_max_assign_all) and assign_anchors
# part ways; none occurs in IMAGES. (boxes, labels, crowd) of one image, and what differs:
ASSIGNMENT_DIFFERENCES = {
    # ours keeps anchors positive when they also lie in a crowd box; mmdet sets their IoU
    # with every object to -1 first, so they are ignored and low-quality matches move elsewhere
    "crowd-over-object": ([[8, 8, 40, 40]], [0], [[0, 0, 48, 48]]),
    # mmdet returns early when an image has no objects: its crowd region is not ignored
    "crowd-only-image": ([], [], [[0, 0, 32, 32]]),
    # a low-quality claim: mmdet reassigns an anchor that is already positive (IoU >= 0.5) for
    # another object to the claimer; ours keeps its best object
    "claim-on-positive": ([[0, 0, 16, 16], [2, 2, 14, 18]], [0, 1], []),
    # min_pos_iou 0: an object no anchor overlaps (degenerate / outside) claims every anchor
    # whose IoU with it is 0, i.e. all of them; ours needs a best IoU > 0
    "unreachable-object": ([[10, 10, 30, 30], [40, 40, 40, 50]], [0, 1], []),
}


@pytest.mark.parametrize("case", sorted(ASSIGNMENT_DIFFERENCES))
def test_assignment_differences_are_pinned(mm, case: str) -> None:
    """Each documented assignment difference (docs/reference-parity.md) still exists."""
    boxes, labels, crowd = ASSIGNMENT_DIFFERENCES[case]
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    lab = torch.tensor(labels, dtype=torch.long)
    c = torch.tensor(crowd, dtype=torch.float32).reshape(-1, 4)
    anchors = generate_anchors(SPEC)
    ours = assign_anchors(anchors, [b], [lab], [c])
    assigner = mm.MaxIoUAssigner(**{k: v for k, v in TRAIN_CFG["assigner"].items() if k != "type"})
    res = assigner.assign(
        mm.InstanceData(priors=anchors),
        mm.InstanceData(bboxes=b, labels=lab),
        mm.InstanceData(bboxes=c),
    )
    same_pos = torch.equal(res.gt_inds > 0, ours.positive[0])
    same_valid = torch.equal(res.gt_inds >= 0, ours.valid[0])
    both = (res.gt_inds > 0) & ours.positive[0]
    same_gt = torch.equal(res.gt_inds[both] - 1, ours.gt_ids[0][both])
    assert not (same_pos and same_valid and same_gt), f"{case}: no longer differs"


def test_normalizer_counts_empty_images_once(mm) -> None:
    """mmdet: sum over images of max(positives, 1); ours max(sum, 1). Pinned, so the rescaling
    below stays honest; with no empty image they agree."""
    head = mm_head(mm, FOCAL, {"type": "L1Loss", "loss_weight": 1.0})
    full = make_problem(IMAGES)
    ours = float(ours_assignment(full).num_positives)
    assert mm_normalizer(head, full) == ours + 1  # one image without positives
    no_empty = make_problem([im for im in IMAGES if im["boxes"]])
    assert mm_normalizer(head, no_empty) == float(ours_assignment(no_empty).num_positives)


def _normalizer_scale(head, problem: Problem) -> float:
    return float(ours_assignment(problem).num_positives.clamp(min=1)) / mm_normalizer(head, problem)


@pytest.mark.parametrize("with_empty_image", [False, True], ids=["no-empty", "with-empty"])
@pytest.mark.parametrize(
    ("reg_loss", "mm_bbox"),
    [
        ("l1", {"type": "L1Loss", "loss_weight": 1.0}),
        ("smooth-l1", {"type": "SmoothL1Loss", "beta": 0.11, "loss_weight": 1.0}),
    ],
)
def test_focal_matches_retinahead(mm, reg_loss: str, mm_bbox: dict, with_empty_image: bool) -> None:
    images = IMAGES if with_empty_image else [im for im in IMAGES if im["boxes"]]
    problem = make_problem(images)
    head = mm_head(mm, FOCAL, mm_bbox)
    scale = _normalizer_scale(head, problem)
    assert (scale != 1.0) == with_empty_image
    logits, deltas = make_predictions(problem, seed=11)
    ref_leaves, ours_leaves = leaves(logits, deltas), leaves(logits, deltas)
    ref = mm_loss(head, problem, *ref_leaves)
    loss = build_loss(
        "focal", {"alpha": 0.25, "gamma": 2.0, "reg_loss": reg_loss, "reg_beta": 0.11}
    )
    ours = loss(*ours_leaves, ours_assignment(problem))
    compare(
        f"focal+{reg_loss}",
        ours,
        ref,
        {"cls": "loss_cls", "reg": "loss_bbox"},
        ours_leaves,
        ref_leaves,
        scale,
    )


GHM_REFERENCE_OPTIONS = {"level_mode": "reference", "ema_init": "zero", "sync_counts": False}


def test_ghm_matches_retinahead_over_batches(mm) -> None:
    """GHMC(30, 0.75) + GHMR(0.02, 10, 0.7, x10), three batches through the same objects: the
    reference's one EMA buffer stepped per level is our level_mode=reference, ema_init=zero."""
    problem = make_problem(IMAGES)
    head = mm_head(
        mm,
        {"type": "GHMC", "bins": 30, "momentum": 0.75, "use_sigmoid": True, "loss_weight": 1.0},
        {"type": "GHMR", "mu": 0.02, "bins": 10, "momentum": 0.7, "loss_weight": 10.0},
    )
    loss = build_loss("ghm", GHM_REFERENCE_OPTIONS)
    assignment = ours_assignment(problem)
    for step, seed in enumerate((21, 22, 23)):
        logits, deltas = make_predictions(problem, seed)
        if step == 2:  # a later batch whose scores moved: the EMA sees other bins
            logits = logits + 1.5
        ref_leaves, ours_leaves = leaves(logits, deltas), leaves(logits, deltas)
        ref = mm_loss(head, problem, *ref_leaves)
        ours = loss(*ours_leaves, assignment)
        compare(
            f"ghm step {step}",
            ours,
            ref,
            {"cls": "loss_cls", "reg": "loss_bbox"},
            ours_leaves,
            ref_leaves,
        )
        for mine, theirs in (
            (loss.cls_harmonizer.density.acc_sum[0], head.loss_cls.acc_sum),
            (loss.reg_harmonizer.density.acc_sum[0], head.loss_bbox.acc_sum),
        ):
            d = rel_diff(mine, theirs)
            assert record(f"ghm step {step}:ema", d) < REL, f"step {step}: EMA {mine} vs {theirs}"


def test_ghm_defaults_differ_from_reference(mm) -> None:
    """The paper-form defaults are not the reference (the options above are what matches)."""
    problem = make_problem(IMAGES)
    head = mm_head(
        mm,
        {"type": "GHMC", "bins": 30, "momentum": 0.75, "use_sigmoid": True, "loss_weight": 1.0},
        {"type": "GHMR", "mu": 0.02, "bins": 10, "momentum": 0.7, "loss_weight": 10.0},
    )
    logits, deltas = make_predictions(problem, 21)
    ref = mm_loss(head, problem, *leaves(logits, deltas))
    ours = build_loss("ghm")(*leaves(logits, deltas), ours_assignment(problem))
    assert rel_diff(ours["cls"], ref["loss_cls"]) > 0.1


PISA_REFERENCE_OPTIONS = {
    "alpha": 0.25,
    "gamma": 2.0,
    "reg_loss": "smooth-l1",
    "reg_beta": 0.11,
    "isr_k": 2.0,
    "isr_bias": 0.0,
    "isr_normalizer": "global",  # the reference's one M for all classes
    "carl_k": 1.0,
    "carl_bias": 0.2,
    "carl_rescale": False,  # the reference has no c' step (true is the paper's c')
}


@pytest.mark.parametrize("with_empty_image", [False, True], ids=["no-empty", "with-empty"])
def test_pisa_matches_pisaretinahead(mm, with_empty_image: bool) -> None:
    images = IMAGES if with_empty_image else [im for im in IMAGES if im["boxes"]]
    problem = make_problem(images)
    head = mm_head(mm, FOCAL, {"type": "SmoothL1Loss", "beta": 0.11, "loss_weight": 1.0}, pisa=True)
    scale = _normalizer_scale(head, problem)
    logits, deltas = make_predictions(problem, seed=31)
    ref_leaves, ours_leaves = leaves(logits, deltas), leaves(logits, deltas)
    ref = mm_loss(head, problem, *ref_leaves)
    ours = build_loss("pisa", PISA_REFERENCE_OPTIONS)(*ours_leaves, ours_assignment(problem))
    compare(
        "pisa" + ("+empty" if with_empty_image else ""),
        ours,
        ref,
        {"cls": "loss_cls", "reg": "loss_bbox", "carl": "loss_carl"},
        ours_leaves,
        ref_leaves,
        scale,
    )


def _pisa_grads(options: dict, problem: Problem) -> dict[str, torch.Tensor]:
    logits, deltas = leaves(*make_predictions(problem, seed=31))
    parts = build_loss("pisa", options)(logits, deltas, ours_assignment(problem))
    sum(parts.values()).backward()
    return {
        "logits": logits.grad,
        "deltas": deltas.grad,
        **{k: v.detach() for k, v in parts.items()},
    }


def test_pisa_reference_options_matter(mm) -> None:
    """The PISA comparison is sensitive: ISR-P changes the positives' gradients (not their loss
    sum, which it keeps by construction), and each non-reference option moves away from it."""
    problem = make_problem([im for im in IMAGES if im["boxes"]])
    reference = _pisa_grads(PISA_REFERENCE_OPTIONS, problem)
    no_isr = _pisa_grads({**PISA_REFERENCE_OPTIONS, "isr_k": 0.0}, problem)  # all weights 1
    assert rel_diff(no_isr["logits"], reference["logits"]) > 1e-3
    per_class = _pisa_grads({**PISA_REFERENCE_OPTIONS, "isr_normalizer": "class"}, problem)
    assert rel_diff(per_class["logits"], reference["logits"]) > 1e-3
    rescaled = _pisa_grads({**PISA_REFERENCE_OPTIONS, "carl_rescale": True}, problem)
    assert rel_diff(rescaled["carl"], reference["carl"]) > 1e-3


def test_pisa_reference_gt_ids_collide_across_images(mm) -> None:
    """Documented reference bug ("gt ids across images"): isr_p offsets each image's object ids
    by the previous image's largest id + 1, not cumulatively, so image 3's objects get image 0's
    and image 2's ids. With equal classes the reference merges them into one object in IoU-HLR;
    ours keeps them apart. Pinned: if this starts matching, the docs' difference is gone."""
    images = [dict(im) for im in IMAGES]
    images[3] = {**images[3], "labels": [0, 0]}  # ids 2, 3 there = image 0's / image 2's class 0
    problem = make_problem(images)
    head = mm_head(mm, FOCAL, {"type": "SmoothL1Loss", "beta": 0.11, "loss_weight": 1.0}, pisa=True)
    scale = _normalizer_scale(head, problem)
    logits, deltas = make_predictions(problem, seed=31)
    ref_leaves, ours_leaves = leaves(logits, deltas), leaves(logits, deltas)
    ref = mm_loss(head, problem, *ref_leaves)
    ours = build_loss("pisa", PISA_REFERENCE_OPTIONS)(*ours_leaves, ours_assignment(problem))
    # the loss sums agree (ISR-P keeps the positives' sum), the weights do not
    assert rel_diff(ours["cls"] * scale, ref["loss_cls"]) < REL
    (sum(ours.values()) * scale).backward()
    sum(ref[k] for k in ("loss_cls", "loss_bbox", "loss_carl")).backward()
    differs = rel_diff(ours_leaves[0].grad, ref_leaves[0].grad)
    RESULTS["pisa gt-id collision (expected) d logits"] = differs
    assert differs > 1e-3


def test_report_max_relative_differences() -> None:
    """The largest relative difference per loss part over every parity case that ran (printed
    with pytest -s): each under the bar, the expected-difference probes above it."""
    if not RESULTS:
        pytest.skip("no parity test ran")
    for key in sorted(RESULTS):
        print(f"{key:32s} {RESULTS[key]:.3e}")
    expected = {k for k in RESULTS if "(expected)" in k}
    assert all(RESULTS[k] < REL for k in set(RESULTS) - expected), RESULTS
    assert all(RESULTS[k] > REL for k in expected), RESULTS

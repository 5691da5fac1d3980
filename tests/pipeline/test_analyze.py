"""`pipeline analyze` on a tiny model, and the analyses' numbers against hand-worked values."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from common.datasets.layout import resolve_split
from pipeline.cli import cli
from train.checkpoint import checkpoint_payload, save_atomic
from train.data.coco import CocoDetection
from train.model.retinanet import ModelConfig, RetinaDetector
from train.paper_analyses import (
    ValidationSamples,
    focal_loss_cdfs,
    ghm_gradient_stats,
    ghm_r_gradient_stats,
    loss_cdf,
    pisa_sample_groups,
)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """An untrained tiny detector saved as a checkpoint: the analyses only need its outputs."""
    root = tmp_path_factory.mktemp("analyze")
    data = root / "synth"
    result = CliRunner().invoke(
        cli, ["data", "synth", "--out", str(data), "--num-train", "4", "--num-val", "6"]
    )
    assert result.exit_code == 0, result.output
    train_set = CocoDetection(*resolve_split(data, "train"), img_size=64)
    torch.manual_seed(0)
    config = ModelConfig(len(train_set.category_ids), img_size=64, fpn_channels=16, head_convs=1)
    payload = checkpoint_payload(
        RetinaDetector(config), train_set.class_names, train_set.category_ids, "focal", {}, {}
    )
    weights = root / "run" / "best.pt"
    save_atomic(payload, weights)
    return weights, data


@pytest.mark.slow
def test_analyze_writes_json_and_figures(tiny_checkpoint, tmp_path):
    weights, data = tiny_checkpoint
    out = tmp_path / "analysis"
    result = CliRunner().invoke(
        cli, ["analyze", "--weights", str(weights), "--data", str(data), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    numbers = json.loads((out / "analysis.json").read_text())
    assert numbers["num_images"] == 6
    cdf = numbers["focal_loss_cdf"]
    assert set(cdf["positives"]["curves"]) == {"0", "0.5", "1", "2"}
    assert cdf["positives"]["count"] > 0 and cdf["negatives"]["count"] > cdf["positives"]["count"]
    for curve in cdf["negatives"]["curves"].values():
        assert curve["cdf"][0] == 0.0 and curve["cdf"][-1] == pytest.approx(1.0)
        assert np.all(np.diff(curve["cdf"]) >= -1e-12)
    ghm = numbers["ghm_gradients"]
    assert sum(ghm["distribution"]) == pytest.approx(1.0)
    assert set(ghm["reweighted"]) == {"ce", "fl_gamma2", "ghm_c"}
    assert set(numbers["pisa_samples"]["groups"]) == {"random", "hard", "prime"}
    ghm_r = numbers["ghm_r_gradients"]
    assert ghm_r["num_coordinates"] == 4 * cdf["positives"]["count"]
    assert sum(ghm_r["distribution"]) == pytest.approx(1.0)
    assert "GHM-R top bin" in result.output
    for name in numbers["figures"].values():
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG"


def test_focal_cdf_at_gamma_0_matches_hand_values():
    # Positives with p = 0.5, 0.75, 0.9, 0.25: CE = ln 2, ln 4/3, ln 10/9, ln 4; one negative.
    logits = torch.tensor([0.0, math.log(3), math.log(9), -math.log(3), 1.0])
    targets = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    cdfs = focal_loss_cdfs(logits, targets)
    positives = cdfs["positives"]
    assert positives["count"] == 4 and cdfs["negatives"]["count"] == 1
    total = math.log(10 / 9 * 4 / 3 * 2 * 4)
    curve = positives["curves"]["0"]["cdf"]  # on fractions 0, 0.01, ..., 1
    assert curve[25] == pytest.approx(math.log(10 / 9) / total)
    assert curve[50] == pytest.approx(math.log(10 / 9 * 4 / 3) / total)
    assert curve[75] == pytest.approx(math.log(10 / 9 * 4 / 3 * 2) / total)
    assert positives["curves"]["0"]["share_of_loss_in_hardest_10pct"] == pytest.approx(
        0.4 * math.log(4) / total
    )


def test_the_tail_is_the_share_of_loss_in_the_hardest_fraction():
    # 1000 negatives: 999 with p = 0.5 (CE ln 2) and one with p = 1 - 1e-4 (CE ln 1e4). At
    # gamma 0 the hardest 0.1% (that one) carries ln 1e4 / (999 ln 2 + ln 1e4) of the loss.
    logits = torch.cat([torch.zeros(999), torch.tensor([math.log(9999.0)])])
    cdfs = focal_loss_cdfs(logits, torch.zeros(1000))
    hardest = cdfs["hardest_fractions"]
    tail = cdfs["negatives"]["curves"]["0"]["share_in_hardest"]
    at = hardest.index(pytest.approx(1e-3))
    total = 999 * math.log(2) + math.log(1e4)
    assert tail[at] == pytest.approx(math.log(1e4) / total, rel=1e-4)
    assert hardest[0] == pytest.approx(1e-6) and tail[-1] == pytest.approx(1.0)


def test_ghm_panel_scales_every_loss_to_the_total_of_ce():
    from pipeline.analysis.plots import same_total_as_ce

    # two bins holding 90% and 10% of the samples; CE's total is 0.9 * 0.1 + 0.1 * 0.8 = 0.17
    ghm = {"distribution": [0.9, 0.1],
           "reweighted": {"ce": [0.1, 0.8], "ghm_c": [100.0, 800.0], "fl": [None, 0.5]}}  # fmt: skip
    scaled = same_total_as_ce(ghm)
    assert scaled["ce"] == pytest.approx([0.1, 0.8])
    # GHM-C total 0.9 * 100 + 0.1 * 800 = 170: scaled by 0.17 / 170 = 1e-3
    assert scaled["ghm_c"] == pytest.approx([0.1, 0.8])
    # FL: only the second bin, total 0.1 * 0.5 = 0.05, scaled by 0.17 / 0.05 = 3.4
    assert scaled["fl"][0] is None and scaled["fl"][1] == pytest.approx(1.7)


def test_loss_cdf_of_equal_losses_is_the_diagonal():
    fractions = np.array([0.0, 0.3, 1.0])
    assert loss_cdf(torch.ones(10), fractions) == pytest.approx([0.0, 0.3, 1.0])


def test_ghm_curves_at_one_gradient_norm():
    # Every sample at p = 0.5, y = 0: g = 0.5 in one bin, so GHM-C's weight is 1 (= CE), and
    # |dFL/dx| = (1 - p_t)^2 |2 p_t log p_t + p_t - 1| at p_t = 0.5.
    stats = ghm_gradient_stats(torch.zeros(8), torch.zeros(8), bins=10)
    assert stats["distribution"][5] == 1.0
    assert stats["reweighted"]["ce"][5] == pytest.approx(0.5)
    assert stats["reweighted"]["ghm_c"][5] == pytest.approx(0.5)
    fl = 0.25 * abs(2 * 0.5 * math.log(0.5) + 0.5 - 1)
    assert stats["reweighted"]["fl_gamma2"][5] == pytest.approx(fl, rel=1e-5)
    assert stats["reweighted"]["ce"][0] is None


def test_ghm_r_shares_by_hand():
    # mu = 0.02: d = 0 -> g = 0 (bin 0); d = mu -> g = 1/sqrt(2) (bin 7); d = +-1 -> g = 1/sqrt(1 +
    # mu^2) (bin 9, twice). n = 3 non-empty bins. ASL1's gradient share is g's share of sum g;
    # GHM-R's divides each bin's sum by (count * n): bin 7 -> g7 / 3, bin 9 -> 2 g9 / (2 * 3).
    g7, g9 = 1 / math.sqrt(2), 1 / math.sqrt(1 + 0.02**2)
    stats = ghm_r_gradient_stats(torch.tensor([[0.0, 0.02, 1.0, -1.0]]), mu=0.02, bins=10)
    assert stats["distribution"] == pytest.approx([0.25] + [0] * 6 + [0.25, 0, 0.5])
    asl1 = stats["gradient_share"]["asl1"]
    assert asl1[7] == pytest.approx(g7 / (g7 + 2 * g9)) and asl1[0] == 0
    ghm_r = stats["gradient_share"]["ghm_r"]
    assert ghm_r[7] == pytest.approx(g7 / (g7 + g9)) and ghm_r[9] == pytest.approx(g9 / (g7 + g9))


def test_pisa_prime_samples_are_each_objects_best():
    ious = torch.tensor([0.5, 0.9, 0.6, 0.7, 0.55, 0.8, 0.52, 0.51, 0.53, 0.54])
    losses = torch.tensor([5.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 4.0])
    samples = ValidationSamples(
        logits=torch.zeros(1),
        targets=torch.zeros(1),
        pos_iou=ious,
        pos_cls_loss=losses,
        pos_labels=torch.zeros(10, dtype=torch.long),
        pos_gt_ids=torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1]),
        num_images=1,
        pos_box_error=torch.zeros(10, 4),
    )
    groups = pisa_sample_groups(samples, fraction=0.2)
    assert groups["k"] == 2
    assert sorted(groups["groups"]["prime"]["iou"]) == pytest.approx([0.8, 0.9])
    assert sorted(groups["groups"]["hard"]["loss"]) == pytest.approx([4.0, 5.0])
    assert groups["groups"]["random"]["count"] == 2


def test_analyze_runs_where_device_says(tiny_checkpoint, tmp_path, monkeypatch):
    """--device reaches the model's forward: cuda without a GPU is one line, exit 2."""
    import torch

    import train.paper_analyses

    weights, data = tiny_checkpoint
    seen = []
    real = train.paper_analyses.collect_samples
    monkeypatch.setattr(
        "pipeline.analysis.analyze.collect_samples",
        lambda *args: seen.append(args[-1]) or real(*args),
    )
    ok = CliRunner().invoke(cli, ["analyze", "--model", str(weights), "--data", str(data), "--out",
                                  str(tmp_path / "a"), "--max-images", "2", "--device", "cpu"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert seen == ["cpu"]
    if not torch.cuda.is_available():
        gpu = CliRunner().invoke(cli, ["analyze", "--model", str(weights), "--data", str(data),
                                       "--out", str(tmp_path / "b"), "--device", "cuda"])  # fmt: skip
        assert gpu.exit_code == 2 and "no CUDA device" in gpu.output
        assert not (tmp_path / "b").exists()

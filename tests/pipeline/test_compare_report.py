"""The loss study's report from hand-made runs: every number checked against pycocotools.

No training: each run's detections are written by the test (perfect, noisy, perturbed or
none), so which loss is better, what int8 costs and who learned nothing are known in advance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deploy.evaluate import load_coco, score_coco
from pipeline.study.markdown import format_summary
from pipeline.study.report import write_report
from pipeline.study.spec import CompareSpec, run_dir
from train.config import TrainConfig

SEEDS = [0, 1]
ENGINES = ["onnx", "onnx-int8"]


def _ground_truth(root: Path, num_images: int = 24) -> list[dict[str, Any]]:
    """A val split of 24 images with 1-3 boxes each in 2 categories; returns the annotations."""
    rng = np.random.default_rng(3)
    images, anns = [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "file_name": f"{i}.png", "width": 200, "height": 200})
        for _ in range(rng.integers(1, 4)):
            x, y, w, h = (*rng.uniform(0, 140, 2), *rng.uniform(20, 60, 2))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 3)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    (root / "annotations" / "instances_val.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories})
    )
    return anns


def _perfect(anns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.9} for a in anns]  # fmt: skip


def _noisy(anns: list[dict[str, Any]], seed: int, spread: float) -> list[dict[str, Any]]:
    """Each box jittered by `spread` px, plus one random false positive per image."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in anns:
        x, y, w, h = np.asarray(a["bbox"]) + rng.normal(0, spread, 4)
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x, y, max(w, 2.0), max(h, 2.0)], "score": float(rng.random())})  # fmt: skip
    for image_id in sorted({a["image_id"] for a in anns}):
        dets.append({"image_id": image_id, "category_id": 1,
                     "bbox": list(rng.uniform(0, 100, 4) + [0, 0, 5, 5]), "score": 0.95})  # fmt: skip
    return dets


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[CompareSpec, dict[str, Any]]:
    """Three losses x two seeds: ce perfect, focal noisy (its int8 noisier), ghm nothing."""
    tmp_path = tmp_path_factory.mktemp("report")
    data = tmp_path / "data"
    anns = _ground_truth(data)
    coco_gt = load_coco(data / "annotations" / "instances_val.json")
    ids = sorted(coco_gt.getImgIds())
    spec = CompareSpec(
        out=tmp_path / "study", losses=["ce", "focal", "ghm"], seeds=SEEDS, backends=ENGINES,
        baseline="focal", resamples=60, base=TrainConfig(out=tmp_path / "unused", data=data),
    )  # fmt: skip
    runs, expected = [], {}
    for loss in spec.losses:
        for seed in SEEDS:
            fp32 = {"ce": _perfect(anns), "focal": _noisy(anns, seed, 3.0), "ghm": []}[loss]
            int8 = _noisy(anns, seed, 6.0) if loss == "focal" else fp32
            dets = {"pytorch": fp32, "onnx": fp32, "onnx-int8": int8}
            folder = run_dir(spec.out, loss, seed)
            folder.mkdir(parents=True)
            metrics = {}
            for engine, found in dets.items():
                (folder / f"detections_{engine}.json").write_text(json.dumps(found))
                metrics[engine] = score_coco(coco_gt, found, ids)
                expected[(loss, seed, engine)] = metrics[engine]["AP"]
            runs.append({
                "loss": loss, "seed": seed, "status": "ok", "metrics": metrics,
                "latency_ms": {e: {"p50": {"pytorch": 9.0, "onnx": 4.0, "onnx-int8": 2.0}[e]}
                               for e in dets},
                "nms_candidates_per_image": {"ce": 50.0, "focal": 300.0 + seed, "ghm": 0.0}[loss],
                "train_seconds": 10.0, "train_images_per_second": 5.0,
            })  # fmt: skip
    write_report(spec, runs)
    return spec, expected


def test_each_number_of_the_report_is_pycocotools_on_the_runs_detections(study) -> None:
    spec, expected = study
    report = json.loads((spec.out / "report.json").read_text())
    assert report["backends"] == ENGINES and report["num_val_images"] == 24
    for loss in spec.losses:
        for engine in ["pytorch", *ENGINES]:
            values = report["per_loss"][loss]["engines"][engine]["metrics"]["AP"]["values"]
            assert values == [pytest.approx(expected[(loss, s, engine)]) for s in SEEDS]
    focal = report["per_loss"]["focal"]
    assert focal["nms_candidates_per_image"]["mean"] == 300.5
    assert focal["engines"]["onnx-int8"]["latency_p50_ms"]["mean"] == 2.0

    # ce against focal on onnx: AP(perfect) - AP(noisy), averaged over the two seeds
    ce = report["effects"]["onnx"]["ce"]
    want = np.mean([expected[("ce", s, "onnx")] - expected[("focal", s, "onnx")] for s in SEEDS])
    assert ce["delta"] == pytest.approx(want, abs=1e-9) and ce["ci"][0] > 0

    # what each engine costs each loss, paired on the same weights
    for loss in spec.losses:
        onnx = report["deployment"]["onnx"][loss]
        assert onnx["delta"] == 0.0 and onnx["ci"] == [0.0, 0.0]  # same detections as PyTorch
    int8 = report["deployment"]["onnx-int8"]["focal"]
    drop = np.mean(
        [expected[("focal", s, "onnx-int8")] - expected[("focal", s, "pytorch")] for s in SEEDS]
    )
    assert drop < 0 and int8["delta"] == pytest.approx(drop, abs=1e-9)
    assert int8["ci"][0] <= drop <= int8["ci"][1]


def test_a_loss_that_learned_nothing_gets_no_verdict(study) -> None:
    spec, _ = study
    report = json.loads((spec.out / "report.json").read_text())
    assert report["did_not_learn"] == ["ghm"]
    assert report["per_loss"]["ghm"]["did_not_learn"] == SEEDS
    for engine in ENGINES:
        assert report["effects"][engine]["ghm"] == {
            "did_not_learn": True,
            "error": "ghm did not learn",
        }
    assert "| ghm (did not learn) |" in (spec.out / "report.md").read_text()


def test_the_terminal_summary_shows_ap_per_engine_and_the_verdicts(study) -> None:
    spec, expected = study
    summary = format_summary(json.loads((spec.out / "report.json").read_text()))
    rows = {line.split()[0]: line for line in summary.splitlines()[2:]}
    assert set(rows) == {"ce", "focal", "ghm"}
    header = summary.splitlines()[1].split("  ")
    assert [h.strip() for h in header if h.strip()][:4] == [
        "loss", "AP PyTorch", "AP onnx", "AP onnx-int8"
    ]  # fmt: skip
    ce_ap = 100 * np.mean([expected[("ce", s, "onnx")] for s in SEEDS])
    assert f"{ce_ap:.1f}" in rows["ce"] and rows["ce"].endswith("better")
    assert "(baseline)" in rows["focal"]
    assert rows["ghm"].endswith("did not learn")


def test_plots_are_readable_pngs(study) -> None:
    spec, _ = study
    for name in ("ap_bars.png", "pr_curves.png", "training_curves.png", "score_distributions.png"):
        with Image.open(spec.out / name) as image:
            assert image.format == "PNG" and image.size[0] >= 700


def test_scores_per_loss_and_engine_come_from_the_runs_detections(study) -> None:
    """AP at each score threshold is pycocotools on the detections kept, averaged over seeds;
    ce's detections all score 0.9 and are all right; focal's int8 detections differ from its
    fp32 ones, and so do their curves."""
    spec, _ = study
    report = json.loads((spec.out / "report.json").read_text())
    scores = report["scores"]
    assert list(scores) == ["pytorch", *ENGINES]
    assert list(scores["onnx"]) == ["ce", "focal", "ghm"]
    data = Path(spec.base.data)
    coco_gt = load_coco(data / "annotations" / "instances_val.json")
    ids = sorted(coco_gt.getImgIds())
    for engine in ("onnx", "onnx-int8"):
        curve = scores[engine]["focal"]["ap_by_threshold"]
        for i, threshold in enumerate(curve["thresholds"]):
            per_seed = []
            for seed in SEEDS:
                path = run_dir(spec.out, "focal", seed) / f"detections_{engine}.json"
                kept = [d for d in json.loads(path.read_text()) if d["score"] >= threshold]
                per_seed.append(score_coco(coco_gt, kept, ids)["AP"])
            assert curve["mean"][i] == pytest.approx(np.mean(per_seed), abs=1e-9)
    ce = scores["onnx"]["ce"]
    assert ce["histogram"]["tp_median_score"] == pytest.approx(0.9)
    assert sum(ce["histogram"]["fp_per_image"]) == 0
    assert ce["best_f1"]["f1"] == pytest.approx(1.0)
    assert scores["onnx"]["ghm"]["histogram"]["tp_median_score"] is None
    markdown = (spec.out / "report.md").read_text()
    assert "## Detection scores on onnx" in markdown
    assert "![score_distributions](score_distributions.png)" in markdown


def test_against_a_reference_study_each_loss_gets_its_change_and_the_change_vs_baseline(
    study, tmp_path: Path
) -> None:
    """A second study of ce and focal on the same images, where ce's detections got noisy:
    ce's change from the reference and its change minus focal's (focal unchanged: 0) are the
    pycocotools APs' differences, seed by seed."""
    reference, expected = study
    data = Path(reference.base.data)
    coco_gt = load_coco(data / "annotations" / "instances_val.json")
    ids = sorted(coco_gt.getImgIds())
    anns = json.loads((data / "annotations" / "instances_val.json").read_text())["annotations"]
    spec = CompareSpec(
        out=tmp_path / "noisy", losses=["ce", "focal"], seeds=SEEDS, backends=["onnx"],
        baseline="focal", resamples=60, base=reference.base, reference=reference.out,
    )  # fmt: skip
    runs, ce_now = [], {}
    for loss in spec.losses:
        for seed in SEEDS:
            folder = run_dir(spec.out, loss, seed)
            folder.mkdir(parents=True)
            found = (
                _noisy(anns, seed + 10, 4.0)
                if loss == "ce"
                else json.loads(
                    (run_dir(reference.out, loss, seed) / "detections_onnx.json").read_text()
                )
            )
            metrics = {}
            for engine in ("pytorch", "onnx"):
                (folder / f"detections_{engine}.json").write_text(json.dumps(found))
                metrics[engine] = score_coco(coco_gt, found, ids)
            if loss == "ce":
                ce_now[seed] = metrics["onnx"]["AP"]
            runs.append({"loss": loss, "seed": seed, "status": "ok", "metrics": metrics,
                         "latency_ms": {e: {"p50": 1.0} for e in metrics},
                         "train_seconds": 1.0, "train_images_per_second": 1.0})  # fmt: skip
    write_report(spec, runs)
    report = json.loads((spec.out / "report.json").read_text())
    ce = report["versus_reference"]["onnx"]["ce"]
    want = np.mean([ce_now[s] - expected[("ce", s, "onnx")] for s in SEEDS])
    assert want < 0 and ce["change"]["delta"] == pytest.approx(want, abs=1e-9)
    assert ce["change"]["ci"][1] < 0  # perfect -> noisy: a loss, outside the noise
    assert ce["change_vs_baseline"]["delta"] == pytest.approx(want, abs=1e-9)  # focal: 0
    focal = report["versus_reference"]["onnx"]["focal"]
    assert focal["change"]["delta"] == 0.0 and "change_vs_baseline" not in focal
    text = (spec.out / "report.md").read_text()
    assert f"## Against the reference study {reference.out}" in text
    assert "| ce | " + f"{want * 100:+.1f}" in text

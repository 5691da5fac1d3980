"""`pipeline compare` end to end on a tiny budget, its resume rules, and the paired bootstrap."""

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from click.testing import CliRunner
from PIL import Image

import pipeline.study.compare
from deploy.evaluate import environment_info, load_coco, score_coco
from deploy.metadata import read_onnx_metadata
from pipeline.cli import cli
from pipeline.errors import PipelineError
from pipeline.study.bootstrap import match_run, paired_bootstrap, weighted_ap
from pipeline.study.compare import split_loss_options
from pipeline.study.spec import LaunchSpec
from tests.cli_support import TINY, invoke, make_tiny_dataset

LOSSES = ("ce", "focal")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory)


def compare_args(data: Path, out: Path, *extra: object) -> list[object]:
    # --keep-state: the resume test turns a finished run back into one killed mid-training,
    # whose last.pt holds the training state
    return ["compare", "--out", out, "--data", data, "--losses", ",".join(LOSSES), "--seeds", 1,
            "--resamples", 20, *TINY, "--keep-state", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def comparison(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "study"
    result = invoke(*compare_args(tiny_data, out))
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_report_matches_the_runs(comparison):
    report = json.loads((comparison / "report.json").read_text())
    assert report["losses"] == list(LOSSES) and report["baseline"] == "focal"
    assert report["backends"] == ["onnx"] and report["num_val_images"] == 6
    for loss in LOSSES:
        run = comparison / "runs" / f"{loss}-s0"
        engine = json.loads((run / "report_onnx.json").read_text())
        torch_report = json.loads((run / "report_pytorch.json").read_text())
        row = report["per_loss"][loss]
        assert row["runs"] == 1 and row["failed"] == []
        onnx_row, torch_row = row["engines"]["onnx"], row["engines"]["pytorch"]
        for metric in ("AP", "AP50", "AP75"):
            assert onnx_row["metrics"][metric]["values"] == [engine["metrics"][metric]]
        assert torch_row["metrics"]["AP"]["mean"] == torch_report["metrics"]["AP"]
        expected_diff = engine["metrics"]["AP"] - torch_report["metrics"]["AP"]
        assert onnx_row["minus_pytorch_AP"]["mean"] == pytest.approx(expected_diff)
        assert onnx_row["latency_p50_ms"]["mean"] == engine["latency"]["total_ms"]["p50"]
        assert row["nms_candidates_per_image"]["mean"] is not None
        assert row["train_seconds"]["mean"] > 0
    # three optimizer steps learn nothing: no verdict is given on AP 0 against AP 0
    assert report["did_not_learn"] == ["ce", "focal"]
    assert report["effects"]["onnx"]["ce"]["did_not_learn"] is True
    assert set(report["pr_curves"]["ce"]) == {"0.5", "0.75"}
    markdown = (comparison / "report.md").read_text()
    assert "Paired bootstrap" in markdown and "| ce (did not learn) |" in markdown


@pytest.mark.slow
def test_plots_are_valid_pngs(comparison):
    for name in ("ap_bars.png", "pr_curves.png", "training_curves.png"):
        with Image.open(comparison / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 200


@pytest.mark.slow
def test_resume_reuses_finished_runs_and_continues_unfinished_ones(
    comparison, tiny_data, monkeypatch
):
    weights = {loss: comparison / "runs" / f"{loss}-s0" / "best.pt" for loss in LOSSES}
    before = {loss: path.stat().st_mtime_ns for loss, path in weights.items()}
    scoring = comparison / "runs" / "ce-s0"  # as if killed while scoring the deployed model
    (scoring / "run.json").unlink()
    (scoring / "report_onnx.json").unlink()
    result = invoke(*compare_args(tiny_data, comparison))
    assert result.exit_code == 0, result.output
    assert {loss: path.stat().st_mtime_ns for loss, path in weights.items()} == before
    assert (scoring / "run.json").is_file() and (scoring / "report_onnx.json").is_file()
    training = comparison / "runs" / "focal-s0"  # killed mid-training: checkpoints, no marker
    (training / "run.json").unlink()
    (training / "trained.json").unlink()
    trained = []
    real_training = pipeline.study.compare.run_training
    monkeypatch.setattr(
        pipeline.study.compare, "run_training", lambda c: trained.append(c) or real_training(c)
    )
    result = invoke(*compare_args(tiny_data, comparison))
    assert result.exit_code == 0, result.output
    assert [(c.loss, c.resume) for c in trained] == [("focal", training)]  # exact resume
    assert weights["ce"].stat().st_mtime_ns == before["ce"]
    assert (training / "trained.json").is_file() and (training / "report_onnx.json").is_file()


@pytest.mark.slow
def test_finished_runs_with_other_options_are_an_error_not_replaced(comparison, tiny_data):
    best = comparison / "runs" / "ce-s0" / "best.pt"
    before = best.stat().st_mtime_ns
    result = CliRunner().invoke(
        cli, [str(a) for a in compare_args(tiny_data, comparison, "--lr", 0.1)]
    )
    assert result.exit_code == 2
    assert "other options" in result.output and "lr" in result.output
    assert best.stat().st_mtime_ns == before


@pytest.mark.slow
def test_asking_for_another_engine_scores_finished_runs_without_training(
    comparison, tiny_data, monkeypatch
):
    weights = {loss: comparison / "runs" / f"{loss}-s0" / "best.pt" for loss in LOSSES}
    before = {loss: path.stat().st_mtime_ns for loss, path in weights.items()}

    def no_training(config):
        raise AssertionError(f"{config.out} trained again")

    monkeypatch.setattr(pipeline.study.compare, "run_training", no_training)
    engines = "onnx,onnx-int8,onnx-int8:percentile"  # the calibrator as an axis of the study
    result = invoke(*compare_args(tiny_data, comparison, "--backend", engines))
    assert result.exit_code == 0, result.output
    assert {loss: path.stat().st_mtime_ns for loss, path in weights.items()} == before
    report = json.loads((comparison / "report.json").read_text())
    assert report["backends"] == ["onnx", "onnx-int8", "onnx-int8:percentile"]
    for loss in LOSSES:
        run = comparison / "runs" / f"{loss}-s0"
        summary = json.loads((run / "run.json").read_text())
        for engine, file in (
            ("onnx-int8", "onnx-int8"),
            ("onnx-int8:percentile", "onnx-int8.percentile"),
        ):
            int8 = json.loads((run / f"report_{file}.json").read_text())
            assert summary["metrics"][engine] == int8["metrics"]
            stats = report["per_loss"][loss]["engines"][engine]["metrics"]["AP"]
            assert stats["values"] == [int8["metrics"]["AP"]]
        # each calibration is its own model file, and says which calibrator made it
        usual = read_onnx_metadata(run / "model.int8.onnx").extra["conversion"]
        percentile = run / "calibration-percentile" / "model.int8.onnx"
        chosen = read_onnx_metadata(percentile).extra["conversion"]
        assert (usual["calibration_method"], chosen["calibration_method"]) == (
            "minmax",
            "percentile",
        )
        scored = json.loads((run / "report_onnx-int8.percentile.json").read_text())
        assert scored["model"] == str(percentile) and scored["conversion"] == chosen
        # the study row says which model file, engine, calibration and machine made its numbers
        provenance = summary["provenance"]["onnx-int8:percentile"]
        assert provenance["precision"] == "int8"
        assert provenance["engine_version"] == f"onnxruntime {onnxruntime.__version__}"
        assert provenance["calibration"] == {
            k: chosen[k]
            for k in ("calibration_method", "calibration_images", "calibration_split",
                      "calibration_list_sha256")
        }  # fmt: skip
        assert provenance["cpu"] == environment_info()["cpu"]
        assert summary["provenance"]["pytorch"]["calibration"] is None
    assert "AP onnx-int8:percentile" in result.output  # the terminal summary
    markdown = (comparison / "report.md").read_text()
    assert "## Effect against focal on onnx-int8:percentile" in markdown
    lines = [line for line in markdown.splitlines() if line.startswith("- onnx-int8:percentile: ")]
    assert len(lines) == 1 and "int8, calibration percentile on" in lines[0]
    assert lines[0].endswith("(2 runs)")


def test_unknown_engine_in_the_list_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(
        cli, ["compare", "--out", str(tmp_path), "--backend", "onnx,openvino-fp8"]
    )
    assert result.exit_code == 2
    assert "openvino-fp8" in result.output and "valid: onnx, onnx-int8" in result.output


def test_unavailable_backend_fails_before_training(tiny_data, tmp_path):
    out = tmp_path / "trt"
    result = CliRunner().invoke(
        cli, [str(a) for a in compare_args(tiny_data, out, "--backend", "tensorrt")]
    )
    assert result.exit_code == 2 and "TensorRT" in result.output
    # the line names compare's own option and the way out, not export's --trt
    assert "--backend tensorrt:" in result.output and "or use --backend onnx" in result.output
    assert "--trt" not in result.output
    assert not (out / "runs").exists()


@pytest.mark.parametrize(
    ("backend", "says"),
    [
        ("onnx:entropy", "only an int8 backend is calibrated; onnx is fp32"),
        ("onnx-int8:magic", "unknown calibration 'magic'; valid: minmax, entropy, percentile"),
        ("tensorrt-int8:percentile", "TensorRT 10 has no percentile calibrator"),
        ("onnx-int9:minmax", "unknown onnx-int9:minmax"),
    ],
)
def test_a_calibration_the_backend_cannot_take_is_one_clear_error(tmp_path, backend, says):
    result = CliRunner().invoke(cli, ["compare", "--out", str(tmp_path), "--backend", backend])
    assert result.exit_code == 2 and says in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_unknown_loss_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["compare", "--out", str(tmp_path), "--losses", "focal,nope"])
    assert result.exit_code == 2 and "nope" in result.output and "valid:" in result.output


def test_loss_options_scoped_or_shared():
    losses = ["ce", "focal", "ghm"]
    shared = split_loss_options({"gamma": "1"}, losses)
    assert shared == {"ce": {"gamma": "1"}, "focal": {"gamma": "1"}, "ghm": {}}
    scoped = split_loss_options({"focal.gamma": "1"}, losses)
    assert scoped == {"ce": {}, "focal": {"gamma": "1"}, "ghm": {}}
    with pytest.raises(PipelineError, match="no compared loss"):
        split_loss_options({"nope": "1"}, losses)
    with pytest.raises(PipelineError, match="not a compared loss"):
        split_loss_options({"pisa.isr_k": "1"}, losses)


# --- the bootstrap on constructed detections ---------------------------------------------


def _dataset(tmp_path: Path, seed: int = 1, num_images: int = 30):
    """Random ground truth in 3 classes, and near-miss, wrong-class and random detections."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "file_name": f"{i}.png", "width": 200, "height": 200})
        for _ in range(rng.integers(0, 4)):
            x, y, w, h = (*rng.uniform(0, 150, 2), *rng.uniform(5, 50, 2))
            cat = int(rng.integers(1, 4))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "iscrowd": 0,
                         "bbox": [x, y, w, h], "area": w * h})  # fmt: skip
            jitter = rng.normal(0, 4, 4)
            box = [x + jitter[0], y + jitter[1], max(1, w + jitter[2]), max(1, h + jitter[3])]
            dets.append({"image_id": i, "category_id": cat, "bbox": box, "score": rng.random()})
        dets.append({"image_id": i, "category_id": int(rng.integers(1, 4)),
                     "bbox": list(rng.uniform(1, 100, 4)), "score": rng.random()})  # fmt: skip
    categories = [{"id": c, "name": str(c)} for c in (1, 2, 3)]
    path = tmp_path / f"gt{seed}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return load_coco(path), anns, dets, [img["id"] for img in images]


def _copies(tmp_path: Path, coco_gt, anns, dets, ids, weights):
    """The dataset with image i present weights[i] times (new ids), and its detections."""
    images, copy_anns, copy_dets = [], [], []
    for image_id, count in zip(ids, weights, strict=True):
        for _ in range(count):
            new_id = len(images) + 1
            images.append({"id": new_id, "file_name": "x.png", "width": 200, "height": 200})
            for ann in (a for a in anns if a["image_id"] == image_id):
                copy_anns.append({**ann, "id": len(copy_anns) + 1, "image_id": new_id})
            copy_dets += [{**d, "image_id": new_id} for d in dets if d["image_id"] == image_id]
    path = tmp_path / "copies.json"
    categories = coco_gt.dataset["categories"]
    path.write_text(
        json.dumps({"images": images, "annotations": copy_anns, "categories": categories})
    )
    return load_coco(path), copy_dets, [img["id"] for img in images]


def test_weighted_ap_is_cocoeval_and_weights_are_copies(tmp_path):
    coco_gt, anns, dets, ids = _dataset(tmp_path)
    matches = match_run(coco_gt, dets, ids)
    reference = score_coco(coco_gt, dets, ids)
    assert weighted_ap(matches) == pytest.approx(reference["AP"], abs=1e-12)
    assert weighted_ap(matches, iou=0.5) == pytest.approx(reference["AP50"], abs=1e-12)
    weights = np.random.default_rng(0).integers(0, 3, len(ids))
    copied = score_coco(*_copies(tmp_path, coco_gt, anns, dets, ids, weights))
    assert weighted_ap(matches, weights) == pytest.approx(copied["AP"], abs=1e-12)


def test_identical_models_differ_by_zero(tmp_path):
    coco_gt, _, dets, ids = _dataset(tmp_path)
    matches = match_run(coco_gt, dets, ids)
    result = paired_bootstrap([(matches, matches), (matches, matches)], resamples=50)
    assert result["delta"] == 0.0 and result["ci"][0] <= 0.0 <= result["ci"][1]
    assert result["effect"] is False


def test_a_clearly_better_model_is_an_effect(tmp_path):
    coco_gt, anns, dets, ids = _dataset(tmp_path)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 0.99} for a in anns]  # fmt: skip
    better, worse = match_run(coco_gt, perfect, ids), match_run(coco_gt, dets, ids)
    result = paired_bootstrap([(better, worse)], resamples=100)
    assert result["delta"] > 0.3 and result["ci"][0] > 0 and result["effect"] is True


def test_no_detections_scores_zero(tmp_path):
    coco_gt, _, _, ids = _dataset(tmp_path)
    assert weighted_ap(match_run(coco_gt, [], ids)) == 0.0


def test_compare_checks_the_losses_of_the_detector_it_trains(monkeypatch, tmp_path):
    """--detector faster-rcnn: --losses and --loss-opt are its head samplers' (random is the
    baseline); a one-stage loss is refused naming the valid ones."""
    captured = []
    monkeypatch.setattr(pipeline.study.compare, "run_compare",
                        lambda s: captured.append(s) or tmp_path / "report.md")  # fmt: skip
    (tmp_path / "report.json").write_text(json.dumps({"backends": ["onnx"], "per_loss": {},
        "primary_backend": "onnx", "baseline": "random", "effects": {"onnx": {}}}))  # fmt: skip
    base = ["compare", "--out", str(tmp_path), "--detector", "faster-rcnn"]
    result = CliRunner().invoke(cli, [*base, "--losses", "random,ohem,pisa",
                                      "--loss-opt", "num_samples=128", "--loss-opt", "pisa.carl_k=2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    spec = captured[0]
    assert (spec.base.detector, spec.baseline) == ("faster-rcnn", "random")
    assert spec.loss_options == {"random": {"num_samples": "128"}, "ohem": {"num_samples": "128"},
                                 "pisa": {"num_samples": "128", "carl_k": "2"}}  # fmt: skip
    refused = CliRunner().invoke(cli, [*base, "--losses", "random,focal"])
    assert refused.exit_code == 2
    assert "unknown focal; valid: random, ohem, pisa" in refused.output


def test_every_compare_option_reaches_the_spec(monkeypatch, tmp_path):
    from tests.pipeline.test_train_options_reach_config import NON_DEFAULTS

    captured = []
    empty = {"backends": ["onnx-int8"], "primary_backend": "onnx-int8", "baseline": "pisa",
             "per_loss": {}, "effects": {"onnx-int8": {}}}  # fmt: skip
    (tmp_path / "report.json").write_text(json.dumps(empty))
    monkeypatch.setattr(
        pipeline.study.compare,
        "run_compare",
        lambda s: captured.append(s) or tmp_path / "report.md",
    )
    params = cli.commands["compare"].params
    flags = {flag for param in params for flag in param.opts + param.secondary_opts}
    # --detector changes which losses exist: its own test below
    shared = {k: v for k, v in NON_DEFAULTS.items() if k in flags and k != "--detector"}
    assert set(NON_DEFAULTS) - set(shared) <= {"--loss", "--overwrite", "--resume", "--detector"}
    assert "--detector" in flags
    args = ["compare", "--out", str(tmp_path), "--losses", "ghm,pisa", "--seeds", "2",
            "--backend", "onnx-int8", "--baseline", "pisa", "--resamples", "50",
            "--launcher", "slurm", "--parallel", "3", "--gpus-per-run", "1", "--slurm-partition",
            "gpu", "--slurm-time", "30", "--nodes-per-run", "2", "--slurm-cluster", "local"]  # fmt: skip
    for flag, (value, _, _) in shared.items():
        args += [flag] if value is None else [flag, value]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    spec = captured[0]
    assert (spec.out, spec.losses, spec.backends) == (tmp_path, ["ghm", "pisa"], ["onnx-int8"])
    assert (spec.baseline, spec.resamples, spec.seeds) == ("pisa", 50, [11, 12])
    assert spec.loss_options == {"ghm": {}, "pisa": {"gamma": "1.5"}}
    assert spec.launch == LaunchSpec("slurm", parallel=3, gpus_per_run=1, slurm_cluster="local",
                                     slurm_partition="gpu", slurm_time_min=30, nodes_per_run=2)  # fmt: skip
    for flag, (_, field, expected) in shared.items():
        if flag not in ("--loss-opt", "--seed"):
            assert getattr(spec.base, field) == expected, flag
    assert {p.name for p in params}.isdisjoint({"loss", "overwrite", "resume"})

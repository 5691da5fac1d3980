"""deploy/evaluate.py piece by piece: hand-worked postprocessing, the batch/warm-up loop as a
predictor sees it, COCO file loading, metric names vs pycocotools, and the environment block."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import PIL
import pytest
from PIL import Image
from pycocotools.cocoeval import COCOeval

from common.contract import Detections
from deploy import evaluate as ev
from deploy.errors import DeployError
from deploy.metadata import ModelMetadata

SIZE = 64
CATEGORY_IDS = [7, 3]  # class index 0 -> category 7, 1 -> category 3


def _metadata(**overrides: Any) -> ModelMetadata:
    values: dict[str, Any] = {
        "class_names": ["cat", "dog"],
        "category_ids": CATEGORY_IDS,
        "img_size": SIZE,
    }
    return ModelMetadata(**(values | overrides))


class GreyPredictor:
    """One detection per image, class 0, whose box's x1 is the image's grey level (so results
    say which image they came from); records the grey level of every image of every call."""

    def __init__(self, metadata: ModelMetadata | None = None, **attributes: str) -> None:
        self.metadata = metadata or _metadata()
        self.calls: list[list[int]] = []
        self.batches: list[np.ndarray] = []
        for name, value in attributes.items():
            setattr(self, name, value)

    def __call__(self, images: np.ndarray) -> Detections:
        batch = images.shape[0]
        self.batches.append(images.copy())
        greys = [int(images[b, 0, 0, 0]) for b in range(batch)]
        self.calls.append(greys)
        boxes = np.zeros((batch, 2, 4), np.float32)
        for b, grey in enumerate(greys):
            boxes[b, 0] = [grey / 10, 0, grey / 10 + 4, 4]
        return Detections(
            num_dets=np.ones(batch, np.int64),
            boxes=boxes,
            scores=np.full((batch, 2), 0.5, np.float32),
            labels=np.array([[0, -1]] * batch, np.int64),
        )


def _dataset(
    tmp_path: Path, images: list[tuple[int, int | None, int | None, bool]], **extra: Any
) -> tuple[Path, Path]:
    """images: (id = grey level, json width, json height, whether the file exists); files are
    32x32 grey PNGs named <id>.png. Returns (annotation file, image folder)."""
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    entries = []
    for image_id, width, height, exists in images:
        if exists:
            Image.new("RGB", (32, 32), (image_id,) * 3).save(img_dir / f"{image_id}.png")
        entry: dict[str, Any] = {"id": image_id, "file_name": f"{image_id}.png"}
        if width is not None:
            entry |= {"width": width, "height": height}
        entries.append(entry)
    dataset = {
        "images": entries,
        "annotations": [
            {"id": 1, "image_id": images[0][0], "category_id": 7, "bbox": [1, 1, 8, 8]}
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    } | extra
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(dataset))
    return ann_file, img_dir


# ------------------------------------------------------------------ postprocess_detections


def test_postprocess_hand_worked_counts_padding_scale_clip_and_xywh() -> None:
    # Image A: 128x96 shown at scale 0.5. Image B: 32x16 at scale 2. Image C: nothing.
    boxes = np.zeros((3, 4, 4), np.float32)
    labels = np.full((3, 4), -1, np.int64)
    scores = np.zeros((3, 4), np.float32)
    boxes[0, :3] = [[10, 4, 30, 20], [-2, 40, 70, 60], [1, 1, 2, 2]]
    labels[0, :4] = [1, 0, -1, 0]  # row 2 is padding inside the count, row 3 is past it
    scores[0, :4] = [0.9, 0.8, 0.1, 0.7]
    boxes[1] = [[2, 2, 10, 6], [60, 0, 70, 40], [0, 0, 4, 4], [8, 8, 12, 12]]
    labels[1] = [0, 1, 0, 1]
    scores[1] = [0.6, 0.5, 0.4, 0.3]
    boxes[2, 0], labels[2, 0], scores[2, 0] = [1, 1, 5, 5], 0, 0.99  # beyond a count of -3
    detections = Detections(
        num_dets=np.array([[3], [9], [-3]]), boxes=boxes, scores=scores, labels=labels
    )
    results = ev.postprocess_detections(
        detections,
        scales=[0.5, 2.0, 1.0],
        image_sizes=[(128, 96), (32, 16), (64, 64)],
        image_ids=[11, 12, 13],
        category_ids=CATEGORY_IDS,
    )
    got = [(r["image_id"], r["category_id"], r["bbox"], pytest.approx(r["score"])) for r in results]
    assert got == [
        (11, 3, [20.0, 8.0, 40.0, 32.0], 0.9),
        (11, 7, [0.0, 80.0, 128.0, 16.0], 0.8),  # clipped to x in [0, 128], y in [0, 96]
        (12, 7, [1.0, 1.0, 4.0, 2.0], 0.6),
        (12, 3, [30.0, 0.0, 2.0, 16.0], 0.5),  # x2 35 -> 32, y2 20 -> 16
        (12, 7, [0.0, 0.0, 2.0, 2.0], 0.4),
        (12, 3, [4.0, 4.0, 2.0, 2.0], 0.3),  # a count of 9 is capped at the 4 rows there are
    ]
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in results)


def test_postprocess_refuses_a_class_index_past_the_metadata() -> None:
    detections = Detections(
        num_dets=np.array([1]),
        boxes=np.zeros((1, 1, 4), np.float32),
        scores=np.ones((1, 1), np.float32),
        labels=np.array([[2]]),
    )
    with pytest.raises(DeployError, match="class index 2 but its metadata lists 2 classes"):
        ev.postprocess_detections(detections, [1.0], [(8, 8)], [1], CATEGORY_IDS)


def test_postprocess_refuses_per_image_lists_of_other_lengths() -> None:
    detections = Detections(
        num_dets=np.zeros(2, np.int64),
        boxes=np.zeros((2, 1, 4), np.float32),
        scores=np.zeros((2, 1), np.float32),
        labels=np.full((2, 1), -1),
    )
    with pytest.raises(ValueError, match="zip"):
        ev.postprocess_detections(detections, [1.0, 1.0], [(8, 8)] * 2, [1], CATEGORY_IDS)


# ------------------------------------------------------------------------- run_batch


def test_short_batch_is_padded_with_copies_of_its_last_image_whose_outputs_are_dropped() -> None:
    predictor = GreyPredictor()
    images = [
        (i, Image.new("RGB", (32, 32), (grey,) * 3)) for i, grey in [(1, 40), (2, 80), (3, 120)]
    ]
    results = ev.run_batch(predictor, predictor.metadata, images, batch_size=5)
    assert predictor.calls == [[40, 80, 120, 120, 120]]
    assert predictor.batches[0].shape == (5, 3, SIZE, SIZE)
    # grey g -> x1 = g / 10 in the 64-pixel input, / 2 (the letterbox scale) in the image
    assert [(r["image_id"], r["bbox"][0]) for r in results] == [(1, 2.0), (2, 4.0), (3, 6.0)]


# ------------------------------------------------------------------ evaluate's image loop


def test_default_warmup_repeats_the_first_image_three_times_then_scores_each_once(
    tmp_path: Path,
) -> None:
    ann_file, img_dir = _dataset(tmp_path, [(60, 32, 32, True), (30, 32, 32, True)])
    predictor = GreyPredictor()
    report = ev.evaluate(predictor, ann_file, img_dir, results_path=tmp_path / "r.json")
    assert predictor.calls == [[30], [30], [30], [30], [60]]  # sorted by id: 30 first
    assert report["num_images"] == 2 and report["batch_size"] == 1
    assert report["skipped_images"] == 0
    written = json.loads((tmp_path / "r.json").read_text())
    assert [(r["image_id"], r["bbox"]) for r in written] == [
        (30, [1.5, 0.0, 2.0, 2.0]),
        (60, [3.0, 0.0, 2.0, 2.0]),
    ]


def test_max_images_takes_the_lowest_ids(tmp_path: Path) -> None:
    ann_file, img_dir = _dataset(
        tmp_path, [(90, 32, 32, True), (20, 32, 32, True), (50, 32, 32, True)]
    )
    predictor = GreyPredictor()
    report = ev.evaluate(predictor, ann_file, img_dir, warmup=0, max_images=2, batch_size=2)
    assert predictor.calls == [[20, 50]]
    assert report["num_images"] == 2 and report["batch_size"] == 2


def test_unreadable_first_image_skips_the_warmup_and_each_unreadable_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ann_file, img_dir = _dataset(
        tmp_path, [(10, 32, 32, False), (20, 32, 32, True), (30, 32, 32, False)]
    )
    predictor = GreyPredictor()
    with caplog.at_level(logging.WARNING, logger="deploy.evaluate"):
        report = ev.evaluate(predictor, ann_file, img_dir, warmup=2)
    assert predictor.calls == [[20]]  # the first batch had nothing readable: no warm-up
    assert report["skipped_images"] == 2 and report["num_images"] == 1
    skipped = [r.getMessage() for r in caplog.records if "image skipped" in r.getMessage()]
    assert len(skipped) == 2  # 10.png read twice (warm-up, loop), 30.png once: one line each
    assert "10.png" in skipped[0] and "30.png" in skipped[1]
    assert "skipped 2 of 3 images" in caplog.text


def test_json_size_that_disagrees_with_the_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ann_file, img_dir = _dataset(
        tmp_path, [(10, 32, 32, True), (20, 40, 32, True), (30, None, None, True)]
    )
    with caplog.at_level(logging.WARNING, logger="deploy.evaluate"):
        ev.evaluate(GreyPredictor(), ann_file, img_dir, warmup=0)
    warnings = [r.getMessage() for r in caplog.records if "differs" in r.getMessage()]
    assert len(warnings) == 1
    assert "20.png: size (32, 32) differs from (40, 32)" in warnings[0]


def test_no_images_or_none_readable_is_an_error(tmp_path: Path) -> None:
    ann_file, img_dir = _dataset(tmp_path, [(10, 32, 32, False), (20, 32, 32, False)])
    with pytest.raises(DeployError, match="none of the 2 images could be read"):
        ev.evaluate(GreyPredictor(), ann_file, img_dir)
    ann_file.write_text(json.dumps({"images": [], "categories": [{"id": 7, "name": "c"}]}))
    with pytest.raises(DeployError, match="no images to evaluate"):
        ev.evaluate(GreyPredictor(), ann_file, img_dir)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch size must be >= 1, got 0"),
        ({"warmup": -1}, "warm-up must be >= 0, got -1"),
        ({"max_images": 0}, "max images must be >= 1, got 0"),
    ],
)
def test_evaluate_checks_its_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    ann_file, img_dir = _dataset(tmp_path, [(10, 32, 32, True)])
    with pytest.raises(DeployError, match=message):
        ev.evaluate(GreyPredictor(), ann_file, img_dir, **kwargs)


def test_model_categories_partly_absent_from_the_dataset_are_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ann_file, img_dir = _dataset(tmp_path, [(10, 32, 32, True)])
    predictor = GreyPredictor(_metadata(category_ids=[7, 5]))
    with caplog.at_level(logging.WARNING, logger="deploy.evaluate"):
        report = ev.evaluate(predictor, ann_file, img_dir, warmup=0)
    assert "model category ids [5] are not in this dataset" in caplog.text
    assert report["num_images"] == 1


def test_a_model_expecting_another_input_format_is_refused(tmp_path: Path) -> None:
    ann_file, img_dir = _dataset(tmp_path, [(10, 32, 32, True)])
    predictor = GreyPredictor(_metadata(input_format="bgr-normalized"), backend_name="trt-x")
    with pytest.raises(DeployError, match="trt-x: model expects input format 'bgr-normalized'"):
        ev.evaluate(predictor, ann_file, img_dir)


def test_predict_images_defaults_run_each_image_once_and_skip_unreadable(tmp_path: Path) -> None:
    ann_file, img_dir = _dataset(
        tmp_path, [(10, 32, 32, True), (20, 32, 32, False), (30, 32, 32, True)]
    )
    infos = json.loads(ann_file.read_text())["images"]
    predictor = GreyPredictor()
    results, skipped = ev.predict_images(predictor, infos, img_dir, ann_file)
    assert predictor.calls == [[10], [30]]
    assert skipped == {20}
    assert [r["image_id"] for r in results] == [10, 30]


@pytest.mark.parametrize("name", ["a.png", "sub/b.png", "sub\\c.png"])
def test_relative_file_names_resolve_inside_the_image_folder(name: str) -> None:
    assert ev.image_path(Path("imgs"), name, Path("a.json")) == Path("imgs") / name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (None, "is not a non-empty string"),
        (5, "is not a non-empty string"),
        ("", "is not a non-empty string"),
        ("/etc/passwd", "escapes imgs"),
        ("C:x.png", "escapes imgs"),  # drive-relative: not absolute, but anchored
        ("C:\\x.png", "escapes imgs"),
        ("../x.png", "escapes imgs"),
        ("sub\\..\\..\\x.png", "escapes imgs"),
    ],
)
def test_file_names_that_are_not_relative_paths_inside_the_folder_are_refused(
    name: Any, why: str
) -> None:
    with pytest.raises(DeployError, match=f"a.json: file_name .* {why}"):
        ev.image_path(Path("imgs"), name, Path("a.json"))


# ---------------------------------------------------------------------- benchmark_latency


def test_benchmark_defaults_are_10_warmup_and_100_timed_runs_of_one_image() -> None:
    predictor = GreyPredictor()
    report = ev.benchmark_latency(predictor)
    assert len(predictor.calls) == 110
    assert report["num_images"] == 100 and report["batch_size"] == 1


def test_benchmark_images_are_random_4_by_3_and_letterboxed() -> None:
    predictor = GreyPredictor()
    ev.benchmark_latency(predictor, batch_size=2, iterations=1, warmup=0)
    (batch,) = predictor.batches
    assert batch.shape == (2, 3, SIZE, SIZE)
    image, padding = batch[:, :, :48], batch[:, :, 48:]  # 64 * 3 / 4 = 48 rows of image
    assert (padding == 114).all()
    assert (image != 114).any(axis=(1, 3)).all()  # every one of the 48 rows is image
    assert image.min() == 0 and image.max() == 255  # uniform over the whole 0..255 range
    assert not np.array_equal(batch[0], batch[1])  # two different images


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch size must be >= 1, got 0"),
        ({"warmup": -1}, "warm-up must be >= 0, got -1"),
        ({"iterations": 0}, "iterations must be >= 1, got 0"),
    ],
)
def test_benchmark_checks_its_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(DeployError, match=message):
        ev.benchmark_latency(GreyPredictor(), **kwargs)


class SlowPredictor(GreyPredictor):
    def __call__(self, images: np.ndarray) -> Detections:
        time.sleep(0.02)
        return super().__call__(images)


def test_each_stage_is_timed_under_its_own_name(tmp_path: Path) -> None:
    ann_file, img_dir = _dataset(tmp_path, [(10, 32, 32, True), (20, 32, 32, True)])
    latency = ev.evaluate(SlowPredictor(), ann_file, img_dir, warmup=1)["latency"]
    assert latency["inference_ms"]["p50"] >= 20  # the predictor sleeps 20 ms a call
    assert latency["preprocess_ms"]["p50"] > 0 and latency["postprocess_ms"]["p50"] > 0
    stages = ("preprocess_ms", "inference_ms", "postprocess_ms")
    total = sum(latency[stage]["mean"] for stage in stages)
    assert latency["total_ms"]["mean"] == pytest.approx(total)


def test_timing_report_names_the_backend_precision_and_cuda_graph() -> None:
    plain = ev.benchmark_latency(GreyPredictor(), batch_size=3, iterations=2, warmup=0)
    assert (plain["backend"], plain["precision"], plain["cuda_graph"]) == (
        "GreyPredictor",
        "fp32",
        "off",
    )
    assert plain["num_images"] == 6 and plain["batch_size"] == 3
    assert plain["throughput_ips"] > 0
    assert len(plain["latency"]["inference_ms"]) == 4
    described = GreyPredictor(backend_name="trt", precision="int8", cuda_graph_status="replayed")
    report = ev.benchmark_latency(described, iterations=1, warmup=0)
    assert (report["backend"], report["precision"], report["cuda_graph"]) == (
        "trt",
        "int8",
        "replayed",
    )


# ------------------------------------------------------------------------------- load_coco


def _write(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_load_coco_fills_area_and_iscrowd_and_indexes_the_file(tmp_path: Path) -> None:
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 5]},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 5], "area": 7.0},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [0, 0, 4, 4], "iscrowd": 1},
    ]
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
    coco = ev.load_coco(
        _write(tmp_path, {"images": images, "annotations": anns, "categories": [{"id": 7}]})
    )
    assert [(a["area"], a["iscrowd"]) for a in coco.loadAnns([1, 2, 3])] == [
        (15.0, 0),
        (7.0, 0),
        (16.0, 1),
    ]
    assert sorted(coco.getImgIds()) == [1, 2] and coco.getAnnIds(imgIds=[2]) == [3]


def test_load_coco_without_annotations_has_none(tmp_path: Path) -> None:
    coco = ev.load_coco(_write(tmp_path, {"images": [], "categories": []}))
    assert coco.getAnnIds() == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ([], "top level is not an object"),
        ({"images": {}}, "missing categories"),
        ({"images": {}, "categories": []}, "'images' must be a list, got dict"),
        ({"images": []}, "missing categories"),
        (
            {"images": [], "categories": [], "annotations": [{"id": 1}]},
            "malformed COCO entry \\(KeyError",
        ),
        (
            {"images": [], "categories": [], "annotations": [{"id": 1, "bbox": [1]}]},
            "malformed COCO entry \\(IndexError",
        ),
    ],
)
def test_load_coco_refuses_what_is_not_a_coco_file(
    tmp_path: Path, content: Any, message: str
) -> None:
    with pytest.raises(DeployError, match=f"ann.json: .*{message}"):
        ev.load_coco(_write(tmp_path, content))


def test_load_coco_refuses_non_utf8_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "ann.json"
    path.write_bytes(b'{"images": ["\xff"]}')
    with pytest.raises(DeployError, match="not valid JSON"):
        ev.load_coco(path)
    with pytest.raises(DeployError, match="nope.json: annotation file not found"):
        ev.load_coco(tmp_path / "nope.json")


# ------------------------------------------------------------------------------- score_coco


def _sized_gt(tmp_path: Path) -> Path:
    """Two 400x300 images with a small (< 32^2), medium and large (> 96^2) object each."""
    gt = [
        (1, 7, [10, 10, 20, 20]),
        (1, 3, [100, 50, 50, 40]),
        (1, 7, [200, 100, 150, 120]),
        (2, 3, [5, 5, 30, 20]),
        (2, 7, [60, 60, 60, 60]),
        (2, 3, [150, 20, 200, 150]),
    ]
    return _write(
        tmp_path,
        {
            "images": [
                {"id": i, "file_name": f"{i}.png", "width": 400, "height": 300} for i in (1, 2)
            ],
            "annotations": [
                {"id": k, "image_id": i, "category_id": c, "bbox": b}
                for k, (i, c, b) in enumerate(gt, start=1)
            ],
            "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        },
    )


DETECTIONS = [  # image, category, bbox, score: a mix of tight, loose, wrong and missed boxes
    (1, 7, [10, 10, 20, 20], 0.9),
    (1, 3, [105, 55, 50, 40], 0.8),  # IoU ~0.6: a hit at 0.5, a miss at 0.75
    (1, 7, [205, 100, 150, 120], 0.4),
    (1, 3, [0, 200, 40, 40], 0.95),  # false positive
    (2, 3, [9, 5, 30, 20], 0.7),
    (2, 7, [60, 60, 60, 60], 0.3),
    (2, 3, [300, 200, 90, 90], 0.85),  # false positive; the large dog is missed
]


def test_each_metric_name_reads_its_own_cocoeval_statistic(tmp_path: Path) -> None:
    ann_file = _sized_gt(tmp_path)
    results = [
        {"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in DETECTIONS
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = ev.load_coco(ann_file)
        reference = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    stats = reference.stats
    # distinct where a name could read its neighbour (AR100 = stats[8], ARs = stats[9])
    assert len({round(float(v), 6) for v in stats[[0, 1, 2, 3, 4, 5, 6, 8]]}) == 8
    assert stats[8] != pytest.approx(stats[9])
    metrics = ev.score_coco(ev.load_coco(ann_file), results, [1, 2])
    assert metrics == pytest.approx(
        {
            "AP": stats[0],
            "AP50": stats[1],
            "AP75": stats[2],
            "APs": stats[3],
            "APm": stats[4],
            "APl": stats[5],
            "AR100": stats[8],
        },
        abs=1e-9,
    )
    assert results[0] == {"image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20], "score": 0.9}


# ------------------------------------------------------------------------ environment block


def test_versions_of_installed_and_absent_distributions() -> None:
    assert ev._version("numpy") == np.__version__
    assert ev._version("no-such-distribution-xyz") == "not installed"
    assert ev._installed(("no-such-distribution-xyz", "numpy")) == f"{np.__version__} (numpy)"
    assert (
        ev._installed(("numpy", "pillow"))
        == f"{np.__version__} (numpy), {PIL.__version__} (pillow)"
    )
    assert ev._installed(("no-such-distribution-xyz",)) == "not installed"


def test_gpu_stack_lists_every_distribution_that_provides_each_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    installed = {
        "tensorrt-cu13": "10.16",
        "tensorrt-cu12": "10.3",
        "tensorrt": "8.6",
        "onnxruntime-gpu": "1.31",
        "onnxruntime": "1.20",
        "cuda-python": "13.0",
        "cuda-bindings": "13.1",
    }
    monkeypatch.setattr(ev, "_version", lambda name: installed.get(name, "not installed"))
    versions = ev.gpu_stack_versions()
    assert versions.pop("nvidia_driver") in ("no NVIDIA driver loaded", ev.nvidia_driver_version())
    assert versions == {
        "onnxruntime_distribution": "1.31 (onnxruntime-gpu), 1.20 (onnxruntime)",
        "tensorrt": "10.16 (tensorrt-cu13), 10.3 (tensorrt-cu12), 8.6 (tensorrt)",
        "cuda_python": "13.0",
        "cuda_bindings": "13.1",
    }


def test_driver_version_needs_the_kernel_module_line(tmp_path: Path) -> None:
    path = tmp_path / "version"
    path.write_text("NVRM version: something else 1.2.3\n")
    assert ev.nvidia_driver_version(path) == "no NVIDIA driver loaded"
    path.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22\n")
    assert ev.nvidia_driver_version(path) == "550.54.14"


def test_onnxruntime_info_with_and_without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    info = ev._onnxruntime_info()
    assert info["onnxruntime"] == onnxruntime.__version__
    assert "CPUExecutionProvider" in info["onnxruntime_providers"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now fails
    assert ev._onnxruntime_info() == {"onnxruntime": "not installed", "onnxruntime_providers": []}


def test_environment_info_values() -> None:
    env = ev.environment_info()
    assert env["python"] == platform.python_version()
    assert env["numpy"] == np.__version__
    assert env["onnx"] == onnx.__version__
    assert env["pillow"] == PIL.__version__
    assert env["pycocotools"][0].isdigit()
    assert env["platform"] == platform.platform()
    assert env["cpu_count"] == os.cpu_count()
    assert env["cpu"] and env["onnxruntime_providers"]
    assert {"onnxruntime_distribution", "tensorrt", "nvidia_driver"} <= set(env)
    import importlib.metadata

    assert env["torch"] == importlib.metadata.version("torch")  # read, not imported
    assert env["openvino"] == importlib.metadata.version("openvino")


def test_gpu_names_come_from_the_driver_files(tmp_path: Path) -> None:
    for bus, model in (("0000:65:00.0", "NVIDIA H100 80GB HBM3"), ("0000:17:00.0", "NVIDIA L4")):
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "information").write_text(
            f"Model: \t\t {model}\nIRQ:   \t\t 35\nGPU UUID: \t GPU-1234\n"
        )
    assert ev.nvidia_gpu_names(tmp_path) == ["NVIDIA L4", "NVIDIA H100 80GB HBM3"]  # bus order
    assert ev.nvidia_gpu_names(tmp_path / "absent") == []


def test_cpu_name_from_cpuinfo_else_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = "processor\t: 0\nvendor_id\t: Acme\nmodel name\t: Acme CPU 9000 @ 3.0GHz\n"
    real_read_text = Path.read_text

    def fake_read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        if str(self) == "/proc/cpuinfo":
            if cpuinfo is None:
                raise OSError("no /proc")
            return cpuinfo
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", fake_read_text)
    assert ev.cpu_name() == "Acme CPU 9000 @ 3.0GHz"
    cpuinfo = None  # type: ignore[assignment]
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    assert ev.cpu_name() == "riscv64"
    monkeypatch.setattr(platform, "processor", lambda: "Acme")
    assert ev.cpu_name() == "Acme"


def test_cpu_speed_flags_name_what_decides_bf16_and_int8_speed(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    # an AMX Xeon's line (shortened), flags in /proc/cpuinfo's own order
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 "
                       "amx_tile amx_int8 avx512_vnni\nprocessor\t: 1\n")  # fmt: skip
    assert ev.cpu_speed_flags(cpuinfo) == [
        "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"
    ]  # fmt: skip
    cpuinfo.write_text("flags\t: fpu sse avx2 fma\n")  # the AVX2-only EPYC
    assert ev.cpu_speed_flags(cpuinfo) == ["avx2"]
    assert ev.cpu_speed_flags(tmp_path / "absent") == []
    assert "cpu_flags" in ev.environment_info()

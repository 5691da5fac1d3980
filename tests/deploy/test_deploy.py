"""deploy/: evaluator vs pycocotools, letterbox, metadata in ONNX, providers, latency, no torch."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from pycocotools.cocoeval import COCOeval

from common.contract import Detections, PostprocessConfig
from common.image import letterbox
from deploy.backends.onnxruntime import OnnxRuntimePredictor, resolve_providers
from deploy.errors import DeployError
from deploy.eval_report import format_metrics_table, write_json_atomic
from deploy.evaluate import benchmark_latency, evaluate, load_coco
from deploy.latency import summarize_latency
from deploy.metadata import ModelMetadata, read_onnx_metadata
from deploy.preprocess import load_image, to_batch
from tests.oracles.model_files import write_onnx_metadata

SIZE = 64
MAX_DETS = 100
CATEGORY_IDS = [7, 3]  # class index 0 -> category 7, 1 -> category 3
# image id -> (file, width, height, fill colour that lets the fake predictor recognise it)
IMAGES = {1: ("a.png", 100, 50, 50), 2: ("b.png", 40, 80, 100), 3: ("c.png", 60, 60, 150)}
GT = [  # image id, category id, x, y, w, h (image 3 has no ground truth)
    (1, 7, 10, 5, 30, 20),
    (1, 3, 60, 10, 25, 30),
    (2, 7, 5, 10, 20, 40),
]


def _metadata(**overrides: object) -> ModelMetadata:
    values = {"class_names": ["cat", "dog"], "category_ids": CATEGORY_IDS, "img_size": SIZE}
    values.update(overrides)
    return ModelMetadata(**values)  # type: ignore[arg-type]


@pytest.fixture()
def coco(tmp_path: Path) -> tuple[Path, Path]:
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    images = []
    for image_id, (name, width, height, colour) in IMAGES.items():
        Image.new("RGB", (width, height), (colour, colour, colour)).save(img_dir / name)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
    annotations = [
        {
            "id": k + 1,
            "image_id": i,
            "category_id": c,
            "bbox": [x, y, w, h],
            "area": w * h,
            "iscrowd": 0,
        }
        for k, (i, c, x, y, w, h) in enumerate(GT)
    ]
    categories = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return ann_file, img_dir


class FakePredictor:
    """Returns fixed detections per image (given in original xywh), found by the image's colour."""

    def __init__(
        self, dets_per_image: dict[int, list[tuple[int, float, float, float, float, float]]]
    ):
        self.metadata = _metadata()
        self.dets_per_image = dets_per_image  # image id -> [(class index, score, x, y, w, h)]
        self.calls = 0

    def __call__(self, images: np.ndarray) -> Detections:
        self.calls += 1
        batch = images.shape[0]
        out = Detections(
            num_dets=np.zeros(batch, np.int64),
            boxes=np.zeros((batch, MAX_DETS, 4), np.float32),
            scores=np.zeros((batch, MAX_DETS), np.float32),
            labels=np.full((batch, MAX_DETS), -1, np.int64),
        )
        for b in range(batch):
            by_colour = {v[3]: i for i, v in IMAGES.items()}
            image_id = by_colour.get(int(images[b, 0, 0, 0]))  # None: a random benchmark image
            if image_id is None:
                continue
            scale = SIZE / max(IMAGES[image_id][1:3])
            dets = self.dets_per_image.get(image_id, [])
            out.num_dets[b] = len(dets)
            for row, (label, score, x, y, w, h) in enumerate(dets):
                out.boxes[b, row] = np.array([x, y, x + w, y + h]) * scale
                out.scores[b, row] = score
                out.labels[b, row] = label
        return out


def _coco_ap_direct(ann_file: Path, dets: dict[int, list[tuple]], img_ids: list[int]) -> np.ndarray:
    """Reference: pycocotools on the same detections, written by hand in original coordinates."""
    results = [
        {"image_id": i, "category_id": CATEGORY_IDS[label], "bbox": [x, y, w, h], "score": score}
        for i, rows in dets.items()
        for label, score, x, y, w, h in rows
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = load_coco(ann_file)
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


PERFECT = {
    i: [(CATEGORY_IDS.index(c), 0.9, x, y, w, h) for (i2, c, x, y, w, h) in GT if i2 == i]
    for i in (1, 2)
}
MIXED = {
    1: [
        (0, 0.9, 11, 6, 30, 20),
        (1, 0.8, 62, 14, 25, 26),
        (1, 0.7, 10, 5, 30, 20),
        (0, 0.3, 0, 0, 9, 9),
    ],
    2: [(0, 0.6, 8, 16, 18, 30), (1, 0.95, 5, 10, 20, 40)],
    3: [(0, 0.85, 5, 5, 40, 40)],  # a false positive on the image without ground truth
}


def test_evaluate_perfect_detections_give_ap_1(coco: tuple[Path, Path], tmp_path: Path) -> None:
    report = evaluate(FakePredictor(PERFECT), *coco, warmup=2, results_path=tmp_path / "res.json")
    assert report["metrics"]["AP"] == pytest.approx(1.0)
    assert report["metrics"]["AP50"] == pytest.approx(1.0)
    assert report["num_images"] == 3 and report["batch_size"] == 1
    assert report["backend"] == "FakePredictor" and report["precision"] == "fp32"
    assert set(report["latency"]) == {"preprocess_ms", "inference_ms", "postprocess_ms", "total_ms"}
    assert set(report["latency"]["total_ms"]) == {"mean", "p50", "p90", "p99"}
    written = json.loads((tmp_path / "res.json").read_text())
    assert len(written) == len(GT)
    assert set(written[0]) == {"image_id", "category_id", "bbox", "score"}
    assert written[0]["bbox"] == pytest.approx([10, 5, 30, 20], abs=1e-4)


def test_evaluate_matches_pycocotools_on_the_same_detections(coco: tuple[Path, Path]) -> None:
    expected = _coco_ap_direct(coco[0], MIXED, [1, 2, 3])
    assert 0.1 < expected[0] < 0.9  # a non-trivial case
    for batch_size in (1, 2):  # 2: the last batch is padded and its extra outputs dropped
        predictor = FakePredictor(MIXED)
        report = evaluate(predictor, *coco, batch_size=batch_size, warmup=1)
        assert predictor.calls == 1 + -(-3 // batch_size)
        metrics = report["metrics"]
        for name, index in [
            ("AP", 0),
            ("AP50", 1),
            ("AP75", 2),
            ("APs", 3),
            ("APm", 4),
            ("AR100", 8),
        ]:
            assert metrics[name] == pytest.approx(expected[index], abs=1e-6), name


def test_evaluate_max_images_scores_only_those_images(coco: tuple[Path, Path]) -> None:
    only_first = {1: PERFECT[1]}
    assert evaluate(FakePredictor(only_first), *coco, warmup=0)["metrics"]["AP"] < 1.0
    report = evaluate(FakePredictor(only_first), *coco, warmup=0, max_images=1)
    assert report["metrics"]["AP"] == pytest.approx(1.0)
    assert report["num_images"] == 1


def test_evaluate_no_detections_gives_zeros(coco: tuple[Path, Path], tmp_path: Path) -> None:
    report = evaluate(FakePredictor({}), *coco, warmup=0, results_path=tmp_path / "r.json")
    assert all(value == 0.0 for value in report["metrics"].values())
    assert json.loads((tmp_path / "r.json").read_text()) == []


def test_evaluate_rejects_foreign_categories_and_missing_files(coco: tuple[Path, Path]) -> None:
    predictor = FakePredictor(PERFECT)
    predictor.metadata = _metadata(category_ids=[100, 101])
    with pytest.raises(DeployError, match="category ids"):
        evaluate(predictor, *coco)
    with pytest.raises(DeployError, match="missing.json"):
        evaluate(FakePredictor(PERFECT), coco[0].parent / "missing.json", coco[1])
    (coco[1] / "b.png").unlink()
    with pytest.raises(DeployError, match="b.png"):
        evaluate(FakePredictor(PERFECT), *coco, strict=True)
    report = evaluate(FakePredictor(PERFECT), *coco)  # not strict: skipped, left out of scoring
    assert report["skipped_images"] == 1 and report["num_images"] == 2


def test_benchmark_latency_reports_timing_without_metrics() -> None:
    report = benchmark_latency(FakePredictor({}), batch_size=2, iterations=3, warmup=1)
    assert report["num_images"] == 6 and "metrics" not in report
    assert report["throughput_ips"] > 0
    assert report["latency"]["inference_ms"]["p50"] >= 0


def test_letterbox_hand_worked_example() -> None:
    image = Image.new("RGB", (100, 50), (200, 10, 30))
    canvas, scale = letterbox(image, 64)
    assert scale == pytest.approx(0.64)
    assert canvas.shape == (64, 64, 3) and canvas.dtype == np.uint8
    assert (canvas[:32, :64] == [200, 10, 30]).all()  # content 64 x 32 at the top-left
    assert (canvas[32:] == 114).all()
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (33, 100, 3), dtype=np.uint8))
    canvas, _ = letterbox(noisy, 64, pad_value=0)  # 33 * 0.64 = 21.12 -> 21 rows
    resized = np.asarray(noisy.resize((64, 21), Image.Resampling.BILINEAR))
    assert (canvas[:21] == resized).all() and (canvas[21:] == 0).all()
    assert letterbox(Image.new("RGB", (1000, 1)), 64)[0][0, :, 0].tolist() == [0] * 64


def test_images_of_other_modes_load_and_letterbox(tmp_path: Path) -> None:
    Image.new("L", (20, 10), 77).save(tmp_path / "gray.png")
    Image.new("RGBA", (20, 10), (1, 2, 3, 0)).save(tmp_path / "rgba.png")
    Image.new("P", (20, 10), 5).save(tmp_path / "pal.png")
    Image.fromarray(np.full((10, 20), 257 * 100, np.uint16)).save(tmp_path / "deep.png")
    expected = {"gray.png": [77] * 3, "rgba.png": [1, 2, 3], "pal.png": None, "deep.png": [100] * 3}
    for name, pixel in expected.items():
        canvas, scale = letterbox(load_image(tmp_path / name), 40)
        assert scale == 2.0 and canvas.shape == (40, 40, 3)
        assert (canvas[20:] == 114).all()
        if pixel is not None:
            assert canvas[5, 5].tolist() == pixel, name
    batch = to_batch([canvas, canvas])
    assert batch.shape == (2, 3, 40, 40) and batch.dtype == np.float32
    assert batch[1, :, 5, 5].tolist() == [100.0] * 3


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DeployError, match="broken.jpg"):
        load_image(tmp_path / "broken.jpg")
    with pytest.raises(DeployError, match="nowhere.png"):
        load_image(tmp_path / "nowhere.png")


OUTPUTS = ("num_dets", "boxes", "scores", "labels")


def _fixed_detections_model(
    metadata: ModelMetadata | None, output_names: tuple[str, ...] = OUTPUTS
) -> onnx.ModelProto:
    """images (N, 3, 64, 64) -> the same padded detections for every image, tiled over N."""
    boxes = np.zeros((1, MAX_DETS, 4), np.float32)
    boxes[0, :3] = np.array([[10, 5, 40, 25], [60, 10, 85, 40], [0, 0, 9, 9]]) * SIZE / 100
    scores = np.zeros((1, MAX_DETS), np.float32)  # boxes above: letterboxed pixels of a.png
    scores[0, :3] = [0.9, 0.8, 0.1]
    labels = np.full((1, MAX_DETS), -1, np.int64)
    labels[0, :3] = [0, 1, 0]
    consts = {"c_num": np.array([3], np.int64), "c_boxes": boxes, "c_scores": scores}
    consts |= {"c_labels": labels, "zero": np.array([0], np.int64), "one": np.array([1], np.int64)}
    consts["one_one"] = np.array([1, 1], np.int64)
    nodes = [
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "one"], ["rep2"], axis=0),
        helper.make_node("Concat", ["batch", "one_one"], ["rep3"], axis=0),
    ]
    outputs = []
    specs = [("c_num", "batch", ["N"]), ("c_boxes", "rep3", ["N", MAX_DETS, 4])]
    specs += [("c_scores", "rep2", ["N", MAX_DETS]), ("c_labels", "rep2", ["N", MAX_DETS])]
    for name, (const, repeats, shape) in zip(output_names, specs, strict=True):
        nodes.append(helper.make_node("Tile", [const, repeats], [name]))
        dtype = helper.np_dtype_to_tensor_dtype(consts[const].dtype)
        outputs.append(helper.make_tensor_value_info(name, dtype, shape))
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    initializers = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "fixed", [images], outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is not None:
        write_onnx_metadata(model, metadata)
    onnx.checker.check_model(model)
    return model


def test_metadata_round_trip_through_onnx(tmp_path: Path) -> None:
    metadata = _metadata(loss="ghm", extra={"parity_max_abs": 1e-5, "precision": "fp32"})
    assert ModelMetadata.from_props(metadata.to_props(), "x") == metadata
    path = tmp_path / "model.onnx"
    onnx.save(_fixed_detections_model(metadata), path)
    assert read_onnx_metadata(path) == metadata


def test_metadata_errors_name_the_file(tmp_path: Path) -> None:
    for name, content in [("text.onnx", b"hello, not a model"), ("empty.onnx", b"")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DeployError, match=f"{name}.*not an ONNX model"):
            read_onnx_metadata(tmp_path / name)
    path = tmp_path / "bare.onnx"
    onnx.save(_fixed_detections_model(None), path)
    with pytest.raises(DeployError, match="bare.onnx: not a model exported by this pipeline"):
        read_onnx_metadata(path)
    with pytest.raises(DeployError, match="bare.onnx"):
        OnnxRuntimePredictor(path, provider="cpu")
    props = _metadata().to_props() | {"softsample.class_names": "__import__('os').getcwd()"}
    with pytest.raises(
        DeployError, match="m.onnx: metadata key softsample.class_names is not valid JSON"
    ):
        ModelMetadata.from_props(props, "m.onnx")


def test_metadata_stores_the_thresholds_under_one_key() -> None:
    thresholds = PostprocessConfig(score_threshold=0.3, nms_iou=0.6, max_detections=20)
    props = _metadata(postprocess=thresholds).to_props()
    assert json.loads(props["softsample.postprocess"]) == {
        "score_threshold": 0.3, "nms_iou": 0.6, "topk_per_level": 1000, "max_detections": 20
    }  # fmt: skip
    assert not {"softsample.score_threshold", "softsample.nms_iou", "postprocess"} & set(props)


def test_metadata_of_a_file_from_before_the_one_thresholds_key() -> None:
    """An older export wrote three threshold keys and top-k under a bare "postprocess" key
    (these strings are such a file's, written out by hand)."""
    old = {
        "softsample.class_names": '["cat", "dog"]',
        "softsample.category_ids": "[7, 3]",
        "softsample.img_size": "64",
        "softsample.pad_value": "114",
        "softsample.input_format": '"rgb-0-255-letterbox-topleft"',
        "softsample.loss": '"focal"',
        "softsample.max_detections": "20",
        "softsample.score_threshold": "0.3",
        "softsample.nms_iou": "0.6",
        "postprocess": '{"max_detections": 20, "nms_iou": 0.6, "score_threshold": 0.3, '
        '"topk_per_level": 50}',
    }
    metadata = ModelMetadata.from_props(old, "old.onnx")
    assert metadata.postprocess == PostprocessConfig(0.3, 0.6, 50, 20)
    assert (metadata.loss, metadata.img_size) == ("focal", 64)
    without_topk = {k: v for k, v in old.items() if k != "postprocess"}
    assert ModelMetadata.from_props(without_topk, "old.onnx").postprocess.topk_per_level == 1000
    missing = {k: v for k, v in old.items() if k != "softsample.nms_iou"}
    with pytest.raises(DeployError, match="old.onnx: .*missing metadata key softsample.postproc"):
        ModelMetadata.from_props(missing, "old.onnx")
    bad = old | {"softsample.score_threshold": "1.5"}
    with pytest.raises(DeployError, match="old.onnx: metadata key .*score_threshold.* invalid"):
        ModelMetadata.from_props(bad, "old.onnx")
    bad = _metadata().to_props() | {"softsample.postprocess": '{"nms_iou": "high"}'}
    with pytest.raises(DeployError, match="new.onnx: metadata key softsample.postprocess has an"):
        ModelMetadata.from_props(bad, "new.onnx")


def test_onnxruntime_predictor_through_the_evaluator(
    coco: tuple[Path, Path], tmp_path: Path
) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_fixed_detections_model(_metadata()), path)
    predictor = OnnxRuntimePredictor(path, provider="cpu", threads=1)
    assert predictor.provider == "CPUExecutionProvider"
    assert predictor.backend_name == "onnxruntime-cpu"
    out = predictor(np.zeros((2, 3, SIZE, SIZE), np.float32))
    assert out.num_dets.tolist() == [3, 3] and out.labels.dtype == np.int64
    report = evaluate(predictor, *coco, batch_size=2, warmup=1, max_images=1)
    rows = {1: [(0, 0.9, 10, 5, 30, 20), (1, 0.8, 60, 10, 25, 30), (0, 0.1, 0, 0, 9, 9)]}
    assert report["metrics"]["AP"] == pytest.approx(
        _coco_ap_direct(coco[0], rows, [1])[0], abs=1e-6
    )
    assert report["backend"] == "onnxruntime-cpu"
    with pytest.raises(DeployError, match="expected input"):
        predictor(np.zeros((1, 3, 32, 32), np.float32))
    wrong = tmp_path / "wrong.onnx"
    onnx.save(_fixed_detections_model(_metadata(), ("n", "b", "s", "l")), wrong)
    with pytest.raises(DeployError, match="wrong.onnx: missing outputs"):
        OnnxRuntimePredictor(wrong, provider="cpu")


def test_provider_selection() -> None:
    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(
        DeployError, match="CUDAExecutionProvider is not available.*onnxruntime-gpu"
    ):
        resolve_providers("cuda", cpu_only)
    with pytest.raises(DeployError, match="TensorrtExecutionProvider is not available"):
        resolve_providers("tensorrt", cpu_only)
    assert resolve_providers("auto", cpu_only) == ["CPUExecutionProvider"]
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("auto", everything) == everything
    assert resolve_providers("cuda", everything) == everything[1:]
    with pytest.raises(DeployError, match="valid: auto, cpu, cuda, tensorrt"):
        resolve_providers("gpu", everything)


def test_asking_for_cuda_on_a_cpu_only_machine(tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    path = tmp_path / "model.onnx"
    onnx.save(_fixed_detections_model(_metadata()), path)
    with pytest.raises(DeployError, match="onnxruntime-gpu"):
        OnnxRuntimePredictor(path, provider="cuda")


def test_deploy_never_imports_torch() -> None:
    code = (
        "import deploy, deploy.evaluate, deploy.backends.onnxruntime, deploy.preprocess, "
        "deploy.metadata, deploy.latency, deploy.eval_report; import sys; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_summarize_latency_hand_worked() -> None:
    summary = summarize_latency([float(v) for v in range(1, 11)])
    # numpy's linear percentile: position q * (n - 1) between the sorted samples.
    assert summary == pytest.approx({"mean": 5.5, "p50": 5.5, "p90": 9.1, "p99": 9.91})
    assert summarize_latency([4.0]) == {"mean": 4.0, "p50": 4.0, "p90": 4.0, "p99": 4.0}
    with pytest.raises(ValueError):
        summarize_latency([])


def test_report_writing_and_table(tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]
    full = {
        "metrics": {"AP": 0.3721, "AP50": 0.55, "AP75": 0.4},
        "latency": {"total_ms": {"p50": 12.345}},
        "throughput_ips": 80.04,
    }
    table = format_metrics_table([("focal", full), ("ghm-bench", {"throughput_ips": 5.0})])
    lines = table.splitlines()
    assert lines[0].split() == ["name", "AP", "AP50", "AP75", "p50", "ms", "throughput"]
    assert lines[2].split() == ["focal", "0.372", "0.550", "0.400", "12.35", "80.0"]
    assert lines[3].split() == ["ghm-bench", "-", "-", "-", "-", "5.0"]

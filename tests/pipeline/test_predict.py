"""`pipeline predict`, the torch-free `deploy.detector.Detector` API and `pipeline data show`.

Predictions come from a model that really detects (tests/detecting_model.py: red squares are
category 3, blue ones 8), and are checked against the dataset's own ground truth with an IoU
computed here, so a wrong letterbox, back-mapping or category lookup shows as a miss.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deploy.detector import Detection, Detector
from deploy.draw import class_colour, draw_detections
from pipeline.data_show import run_data_show
from tests.cli_support import invoke
from tests.corpus import assert_one_line_error
from tests.corpus import invoke as invoke_catching
from tests.detecting_model import BACKGROUND, COLOURS, detecting_run

ROOT = Path(__file__).resolve().parents[2]


def iou_xywh(a: list[float], b: list[float]) -> float:
    """Intersection over union of two x, y, w, h boxes, written out plainly."""
    inter_w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return detecting_run(tmp_path_factory)


@pytest.fixture(scope="module")
def onnx_model(run) -> Path:
    return run.run / "model.onnx"


def predict_json(model: Path, sources: list, out: Path, *args: object) -> dict:
    result = invoke("predict", "--model", model, *sources, "--out", out, *args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "detections.json").read_text())


@pytest.fixture(scope="module")
def onnx_default(run, onnx_model, tmp_path_factory) -> dict:
    """The val folder through the .onnx model at the default --conf 0.25."""
    return predict_json(onnx_model, [run.val_images], tmp_path_factory.mktemp("onnx-default"))


@pytest.fixture(scope="module")
def onnx_all(run, onnx_model, tmp_path_factory) -> dict:
    """Everything the model outputs: --conf at the graph's own score threshold, 0.05."""
    out = tmp_path_factory.mktemp("onnx-all")
    return predict_json(onnx_model, [run.val_images], out, "--conf", "0.05")


def by_file_name(predictions: dict) -> dict[str, dict]:
    return {Path(record["path"]).name: record for record in predictions["images"]}


def test_predict_finds_every_ground_truth_square_in_original_pixels(run, onnx_default):
    gt = json.loads(run.val_ann.read_text())
    names = {cat["id"]: cat["name"] for cat in gt["categories"]}
    records = by_file_name(onnx_default)
    assert len(records) == len(gt["images"])
    for info in gt["images"]:
        record = records[info["file_name"]]
        assert (record["width"], record["height"]) == (info["width"], info["height"])
    for ann in gt["annotations"]:
        info = next(i for i in gt["images"] if i["id"] == ann["image_id"])
        hits = [
            det
            for det in records[info["file_name"]]["detections"]
            if det["category_id"] == ann["category_id"]
            and iou_xywh(det["bbox"], ann["bbox"]) >= 0.5
        ]
        assert hits, (info["file_name"], ann, records[info["file_name"]]["detections"])
        assert all(det["category_name"] == names[ann["category_id"]] for det in hits)


def test_onnx_and_pt_give_the_same_detections(run, onnx_default, tmp_path):
    from_pt = by_file_name(predict_json(run.weights, [run.val_images], tmp_path))
    from_onnx = by_file_name(onnx_default)
    assert sum(len(r["detections"]) for r in from_onnx.values()) >= len(from_onnx)
    assert from_pt.keys() == from_onnx.keys()
    for name, record in from_onnx.items():
        pt_dets, onnx_dets = from_pt[name]["detections"], record["detections"]
        assert len(pt_dets) == len(onnx_dets), name
        for pt_det, onnx_det in zip(pt_dets, onnx_dets, strict=True):
            assert pt_det["category_id"] == onnx_det["category_id"]
            assert pt_det["bbox"] == pytest.approx(onnx_det["bbox"], abs=0.02)
            assert pt_det["score"] == pytest.approx(onnx_det["score"], abs=1e-4)


def test_conf_keeps_exactly_the_detections_scoring_at_least_it(run, onnx_model, onnx_all, tmp_path):
    scores = sorted(d["score"] for r in onnx_all["images"] for d in r["detections"])
    conf = scores[len(scores) // 2]  # a real score: the boundary case "equal" is kept
    filtered = predict_json(onnx_model, [run.val_images], tmp_path, "--conf", conf)
    for name, record in by_file_name(onnx_all).items():
        expected = [d for d in record["detections"] if d["score"] >= conf]
        assert by_file_name(filtered)[name]["detections"] == expected, name
    assert filtered["conf"] == conf


def test_max_dets_keeps_the_highest_scores(run, onnx_model, onnx_all, tmp_path):
    capped = by_file_name(
        predict_json(onnx_model, [run.val_images], tmp_path, "--conf", "0.05", "--max-dets", 2)
    )
    assert any(len(r["detections"]) > 2 for r in onnx_all["images"])
    for name, record in by_file_name(onnx_all).items():
        best = sorted(record["detections"], key=lambda d: -d["score"])[:2]
        assert capped[name]["detections"] == best, name


@pytest.mark.slow
def test_a_pt_checkpoint_runs_nms_and_the_score_threshold_as_asked(run, tmp_path):
    """A .pt has no baked thresholds: --iou 0.3 leaves no same-class pair above 0.3, and a
    --conf below the exported default (0.05) returns the extra low-scoring detections."""

    def same_class_ious(predictions: dict) -> list[float]:
        ious = []
        for record in predictions["images"]:
            # Boxes cut by the image's right or bottom edge (clipped after NMS) are left out.
            dets = [
                d
                for d in record["detections"]
                if d["bbox"][0] + d["bbox"][2] < record["width"] - 0.5
                and d["bbox"][1] + d["bbox"][3] < record["height"] - 0.5
            ]
            for i, a in enumerate(dets):
                for b in dets[i + 1 :]:
                    if a["category_id"] == b["category_id"]:
                        ious.append(iou_xywh(a["bbox"], b["bbox"]))
        return ious

    at_default = predict_json(run.weights, [run.val_images], tmp_path / "a", "--conf", "0.05")
    assert sum(0.3 < v <= 0.5 for v in same_class_ious(at_default)) >= 5
    strict = predict_json(
        run.weights, [run.val_images], tmp_path / "b", "--conf", "0.05", "--iou", "0.3"
    )
    assert strict["iou"] == 0.3 and max(same_class_ious(strict)) <= 0.3 + 1e-6
    low = predict_json(run.weights, [run.val_images], tmp_path / "c", "--conf", "0.01")
    low_scores = [d["score"] for r in low["images"] for d in r["detections"]]
    assert min(low_scores) >= 0.01
    assert sum(s < 0.05 for s in low_scores) > 0


def _big_image_with_a_red_square(path: Path) -> list[float]:
    """A 400 x 300 image of the training data's kind, with one 150-px red square; its gt box."""
    rng = np.random.default_rng(5)
    pixels = np.empty((300, 400, 3), dtype=np.int64)
    pixels[:] = BACKGROUND
    pixels += rng.integers(-12, 13, pixels.shape)
    pixels[110:260, 40:190] = COLOURS[3]
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return [40.0, 110.0, 150.0, 150.0]


def test_drawn_image_changes_on_the_boxes_and_nowhere_far_from_them(onnx_model, tmp_path):
    source = tmp_path / "big.png"
    gt_box = _big_image_with_a_red_square(source)
    predictions = predict_json(onnx_model, [source], tmp_path / "out")
    dets = predictions["images"][0]["detections"]
    matched = [d for d in dets if iou_xywh(d["bbox"], gt_box) >= 0.5]
    assert [d["category_id"] for d in matched] == [3]
    original = np.asarray(Image.open(source).convert("RGB")).astype(int)
    drawn = np.asarray(Image.open(tmp_path / "out" / "big.png").convert("RGB")).astype(int)
    assert drawn.shape == original.shape
    changed = np.any(drawn != original, axis=2)
    for det in dets:
        x, y, w, h = det["bbox"]
        mid_x, mid_y = round(x + w / 2), round(y + h / 2)
        edges = [(round(x), mid_y), (round(x + w) - 1, mid_y), (mid_x, round(y)),
                 (mid_x, round(y + h) - 1)]  # fmt: skip
        assert all(changed[row, col] for col, row in edges), (det, edges)
    x, y, w, h = matched[0]["bbox"]
    assert not changed[round(y + h / 2), round(x + w / 2)]  # inside a box is left as it was
    near = np.zeros_like(changed)
    margin = 60  # px around each box, room for the label tag above it
    for det in dets:
        x, y, w, h = det["bbox"]
        top, left = max(0, int(y) - margin), max(0, int(x) - margin)
        near[top : int(y + h) + margin, left : int(x + w) + margin] = True
    assert (~near).sum() > 10_000
    assert not changed[~near].any()


def test_line_width_and_label_grow_with_the_image():
    """The same box drawn on a 100-px and a 1000-px image: band and tag are thicker on the big
    one (measured on the drawn pixels), so both stay readable."""

    def band_and_tag(side: int) -> tuple[int, int]:
        image = Image.new("RGB", (side, side), (128, 128, 128))
        box = (0.3 * side, 0.5 * side, 0.4 * side, 0.3 * side)
        drawn = np.asarray(draw_detections(image, [Detection(box, 3, "red", 0.9)], [3, 8]))
        changed = np.any(drawn != 128, axis=2)
        row, left = round(0.65 * side), round(0.3 * side)
        band = int(np.argmin(changed[row, left:]))  # changed run from the left edge inwards
        column = round(0.32 * side)
        tag = int(changed[: round(0.5 * side), column].sum())  # above the box: the tag
        return band, tag

    small, big = band_and_tag(100), band_and_tag(1000)
    assert small[0] >= 2 and small[1] >= 10
    assert big[0] >= 2 * small[0] and big[1] >= 2 * small[1]


def test_a_colour_per_class():
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    dets = [
        Detection((10, 40, 50, 50), 3, "red", 0.9),
        Detection((120, 40, 50, 50), 8, "blue", 0.8),
    ]
    drawn = np.asarray(draw_detections(image, dets, [3, 8]))
    assert tuple(drawn[65, 10]) == class_colour(0) and tuple(drawn[65, 120]) == class_colour(1)
    assert class_colour(0) != class_colour(1)


def test_the_api_on_numpy_equals_the_api_on_pil_and_the_cli(run, onnx_model, onnx_default):
    paths = sorted(run.val_images.glob("*.png"))[:5]
    images = [Image.open(path).convert("RGB") for path in paths]
    detector = Detector.load(onnx_model, provider="cpu")
    singles = [detector(image) for image in images]
    assert all(isinstance(d, Detection) for dets in singles for d in dets)
    assert [detector(np.asarray(image)) for image in images] == singles
    batched = Detector.load(onnx_model, provider="cpu", batch_size=3).predict_batch(images)
    for one, other in zip(batched, singles, strict=True):
        assert [d.category_id for d in one] == [d.category_id for d in other]
        for a, b in zip(one, other, strict=True):
            assert a.bbox == pytest.approx(b.bbox, abs=1e-3) and a.score == pytest.approx(b.score)
    records = by_file_name(onnx_default)
    for path, dets in zip(paths, singles, strict=True):
        assert [d.to_dict() for d in dets] == records[path.name]["detections"]


def test_the_api_refuses_what_it_cannot_honour_exactly(onnx_model):
    from deploy.errors import DeployError

    with pytest.raises(DeployError, match="IoU 0.5"):
        Detector.load(onnx_model, iou=0.3)
    with pytest.raises(DeployError, match="below"):
        Detector.load(onnx_model, conf=0.01)
    with pytest.raises(DeployError, match=r"\[1, 100\]"):
        Detector.load(onnx_model, max_dets=101)
    with pytest.raises(DeployError, match="H x W x 3 uint8"):
        Detector.load(onnx_model)(np.zeros((8, 8), dtype=np.uint8))
    assert Detector.load(onnx_model, iou=0.5).iou == 0.5


def test_predict_of_an_onnx_model_runs_without_torch(run, onnx_model, tmp_path):
    image = sorted(run.val_images.glob("*.png"))[0]
    code = (
        "import sys\nfrom PIL import Image\nfrom pipeline.cli import cli\n"
        f"cli(['predict', '--model', {str(onnx_model)!r}, {str(image)!r}, "
        f"'--out', {str(tmp_path)!r}], standalone_mode=False)\n"
        "from deploy.detector import Detector\n"
        f"print(len(Detector.load({str(onnx_model)!r})(Image.open({str(image)!r}))))\n"
        "print('torch loaded:', 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("torch loaded: False"), out.stdout
    assert int(out.stdout.split()[-4]) >= 1  # the API found the square too


def test_sources_mix_folders_files_and_quoted_globs_each_image_once(run, onnx_model, tmp_path):
    val = run.val_images
    same_file = val / ".." / val.name / "0002.png"  # another spelling of a globbed file
    sources = [str(val / "000[1-3].png"), same_file, str(val / "001*.png"), val / "0010.png"]
    predictions = predict_json(onnx_model, sources, tmp_path)
    names = [Path(r["path"]).name for r in predictions["images"]]
    expected = ["0001.png", "0002.png", "0003.png"] + [f"00{i}.png" for i in range(10, 20)]
    assert names == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*expected, "detections.json"])


def test_an_unreadable_image_among_good_ones_is_skipped_and_counted(run, onnx_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("0001.png", "0002.png"):
        (folder / name).write_bytes((run.val_images / name).read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    result = invoke("predict", "--model", onnx_model, folder, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "1 unreadable skipped" in result.output
    predictions = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert [Path(r["path"]).name for r in predictions["images"]] == ["0001.png", "0002.png"]
    assert [Path(s["path"]).name for s in predictions["skipped"]] == ["broken.png"]
    assert not (tmp_path / "out" / "broken.png").exists()


def test_existing_outputs_need_overwrite(run, onnx_model, tmp_path):
    image = run.val_images / "0001.png"
    assert invoke("predict", "--model", onnx_model, image, "--out", tmp_path).exit_code == 0
    again = invoke_catching("predict", "--model", onnx_model, image, "--out", tmp_path)
    assert_one_line_error(again, "already exists; pass --overwrite")
    args = ("predict", "--model", onnx_model, image, "--out", tmp_path, "--overwrite")
    assert invoke(*args).exit_code == 0
    (tmp_path / "detections.json").unlink()  # a drawn image alone is refused too
    again = invoke_catching("predict", "--model", onnx_model, image, "--out", tmp_path)
    assert_one_line_error(again, "0001.png: already exists; pass --overwrite")


def _bad_input_cases(tmp: Path, run, onnx_model: Path) -> dict[str, tuple[list, str]]:
    """name -> (predict arguments, text the one error line must contain)."""
    empty = tmp / "empty"
    empty.mkdir()
    broken = tmp / "broken.png"
    broken.write_bytes(b"\x89PNG but no more")
    not_a_model = tmp / "weights.txt"
    not_a_model.write_text("hello")
    other = tmp / "other"
    other.mkdir()
    (other / "0001.png").write_bytes((run.val_images / "0001.png").read_bytes())
    image = run.val_images / "0001.png"
    out = ["--out", tmp / "out"]
    return {
        "missing image": (["--model", onnx_model, tmp / "nope.png", *out], "nope.png"),
        "empty folder": (["--model", onnx_model, empty, *out], "empty: no image files"),
        "glob matching nothing": (["--model", onnx_model, str(tmp / "*.jpg"), *out], "*.jpg"),
        "unreadable image": (["--model", onnx_model, broken, *out], "broken.png"),
        "wrong model type": (["--model", not_a_model, image, *out], "weights.txt"),
        "missing model": (["--model", tmp / "gone.onnx", image, *out], "gone.onnx"),
        "iou other than the graph's": (
            ["--model", onnx_model, image, "--iou", "0.3", *out],
            "NMS runs inside this model at IoU 0.5",
        ),
        "conf below the graph's": (
            ["--model", onnx_model, image, "--conf", "0.01", *out],
            "below the 0.05",
        ),
        "max dets above the graph's": (
            ["--model", onnx_model, image, "--max-dets", "500", *out],
            "[1, 100]",
        ),
        "out is the input folder": (
            ["--model", onnx_model, other, "--out", other, "--overwrite"],
            "would overwrite this input image",
        ),
        "two inputs of one name": (
            ["--model", onnx_model, image, other / "0001.png", *out],
            "would both be drawn",
        ),
    }


def test_bad_input_is_one_line_naming_it_and_exit_2(run, onnx_model, tmp_path):
    for name, (args, expected) in _bad_input_cases(tmp_path, run, onnx_model).items():
        result = invoke_catching("predict", *args)
        try:
            assert_one_line_error(result, expected)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- pipeline data show ---------------------------------------------------------------------

SHOW_CATEGORIES = [{"id": 9, "name": "kite"}, {"id": 5, "name": "person"}]
# (file, width, height, [(category_id, x, y, w, h, iscrowd)]); boxes well below the top edge,
# so each label tag sits above its box and the box's own edges stay bare.
SHOW_IMAGES = [
    ("a.png", 100, 80, [(5, 10, 30, 40, 30, 0), (9, 60, 35, 30, 30, 0)]),
    ("b.png", 60, 120, [(5, 5, 40, 45, 60, 1)]),
    ("c.png", 90, 90, [(9, 20, 40, 50, 40, 0), (5, 30, 50, 20, 20, 0)]),
]
SHOW_GREY = (60, 60, 60)


def _show_dataset(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    images, annotations = [], []
    for image_id, (name, width, height, boxes) in enumerate(SHOW_IMAGES, start=1):
        Image.new("RGB", (width, height), SHOW_GREY).save(root / "val" / name)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for category_id, x, y, w, h, crowd in boxes:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd}
            )  # fmt: skip
    dataset = {"images": images, "annotations": annotations, "categories": SHOW_CATEGORIES}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(dataset))
    return root


def test_data_show_draws_every_ground_truth_box_and_dashes_crowds(tmp_path):
    data = _show_dataset(tmp_path / "data")
    out = tmp_path / "grid.png"
    result = invoke("data", "show", "--data", data, "--split", "val", "--out", out)
    assert result.exit_code == 0, result.output
    assert "3 images, 5 boxes (1 crowd)" in result.output
    grid = run_data_show(data, "val", out=tmp_path / "again.png")
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert np.array_equal(pixels, np.asarray(Image.open(tmp_path / "again.png").convert("RGB")))
    assert [tile.file_name for tile in grid.tiles] == [name for name, *_ in SHOW_IMAGES]
    colour_of = {5: class_colour(0), 9: class_colour(1)}  # by category id, sorted
    for tile, (_, _, _, boxes) in zip(grid.tiles, SHOW_IMAGES, strict=True):
        assert (tile.boxes, tile.crowd_boxes) == (len(boxes), sum(b[5] for b in boxes))
        for category_id, x, y, w, h, crowd in boxes:
            # The middle column of the 3-px band drawn inward from each side edge.
            left = tile.origin[0] + round(x * tile.scale) + 1
            right = tile.origin[0] + round((x + w) * tile.scale) - 2
            top = tile.origin[1] + round(y * tile.scale)
            bottom = tile.origin[1] + round((y + h) * tile.scale)
            for column in (left, right):
                edge = pixels[top + 8 : bottom - 8, column]  # corners left out
                is_colour = np.all(edge == colour_of[category_id], axis=1)
                if crowd:  # dashed: runs of colour with the image between them
                    runs = int(np.sum(np.diff(is_colour.astype(int)) == 1))
                    assert runs >= 3 and 0.3 < is_colour.mean() < 0.7, is_colour
                else:
                    assert is_colour.all(), (tile.file_name, category_id, edge[~is_colour][:3])
    assert [tile.labels for tile in grid.tiles] == [
        ("person", "kite"),
        ("crowd person",),
        ("kite", "person"),
    ]


def test_data_show_crowd_label_and_bad_input(tmp_path):
    data = _show_dataset(tmp_path / "data")
    out = tmp_path / "grid.png"
    grid = run_data_show(data, "val", num=2, out=out)
    assert [tile.file_name for tile in grid.tiles] == ["a.png", "b.png"]
    assert grid.line().endswith("2 images, 3 boxes (1 crowd)")
    again = invoke_catching("data", "show", "--data", data, "--split", "val", "--out", out)
    assert_one_line_error(again, "already exists; pass --overwrite")
    missing = invoke_catching(
        "data", "show", "--data", tmp_path / "nowhere", "--out", tmp_path / "x.png"
    )
    assert_one_line_error(missing, "nowhere")

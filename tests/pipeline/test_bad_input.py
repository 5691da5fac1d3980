"""The bad-input corpus, run through the CLI: every case is one line naming the file, exit code 2.

Images in other modes (grayscale, alpha, palette, 16-bit, 1-bit, CMYK) and an input size that the
largest stride (128) does not divide must work; a bad image inside an otherwise good dataset is
skipped with a warning and a count, and `--strict` turns it into the one-line error.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.corpus import (
    LOADABLE_MODES,
    MIXED_SIZE,
    TINY,
    LogRecorder,
    Trained,
    assert_one_line_error,
    built_for_three_classes,
    cut_copy,
    edit_json,
    edited_checkpoint,
    engine_from_other_tensorrt,
    foreign_onnx,
    image_name,
    invoke,
    make_dataset,
    make_mixed_dataset,
    make_split,
    onnx_with_code_in_metadata,
    three_classes,
    truncate,
    write_image,
    write_malicious_pickle,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One tiny run at a size 128 does not divide, on every image mode plus bad files."""
    root = tmp_path_factory.mktemp("mixed")
    batch = make_mixed_dataset(root)
    out = tmp_path_factory.mktemp("runs") / "mixed"
    args = ["--img-size", MIXED_SIZE, "--batch-size", batch]
    with LogRecorder() as recorder:
        result = invoke("train", "--data", root, "--out", out, *TINY, *args)
        assert result.exit_code == 0, result.output
        export = invoke("export", "--weights", out / "best.pt", "--data", root)
    assert export.exit_code == 0 and "detections match: True" in export.output, export.output
    return Trained(root, out / "best.pt", out / "model.onnx", "\n".join(recorder.lines))


# ----------------------------------------------------------------------------- the corpus
# Each case prepares files under `tmp` (a valid dataset is at tmp/"data") and returns the CLI
# arguments and the file name the error line must contain.
Case = Callable[[Path, Trained], tuple[list, str]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(func: Case) -> Case:
        CASES[name] = func
        return func

    return register


def train(tmp: Path, *extra: object) -> list:
    return ["train", "--data", tmp / "data", "--out", tmp / "run", *TINY, *extra]


def train_json(tmp: Path) -> Path:
    return tmp / "data" / "annotations" / "instances_train.json"


def json_case(name: str, content: bytes) -> None:
    @case(name)
    def _(tmp: Path, _: Trained) -> tuple[list, str]:
        train_json(tmp).write_bytes(content)
        return train(tmp), "instances_train.json"


json_case("json-syntax-error", b'{"images": [')
json_case("json-empty-file", b"")
json_case("json-not-utf8", b'\xff\xfe{"images": []}')
json_case("json-top-level-list", b"[1, 2]")
json_case("json-missing-annotations", b'{"images": [], "categories": []}')
json_case("json-images-not-a-list", b'{"images": {}, "annotations": [], "categories": []}')


def edit_case(name: str, change: Callable[[dict], None], *extra: str) -> None:
    @case(name)
    def _(tmp: Path, _: Trained) -> tuple[list, str]:
        edit_json(train_json(tmp), change)
        return train(tmp, *extra), "instances_train.json"


def _set_ann(key: str, value: object) -> Callable[[dict], None]:
    return lambda data: data["annotations"][0].__setitem__(key, value)


def _set_img(key: str, value: object) -> Callable[[dict], None]:
    return lambda data: data["images"][0].__setitem__(key, value)


edit_case("image-entry-lacks-file-name", lambda d: d["images"][0].pop("file_name"))
edit_case("duplicate-image-id", _set_img("id", 2))
edit_case("width-not-an-integer", _set_img("width", "48"))
edit_case("bbox-not-four-numbers", _set_ann("bbox", [1, 2]))
edit_case("bbox-strings", _set_ann("bbox", ["a", "b", "c", "d"]))
edit_case("unknown-category-id", _set_ann("category_id", 99))
edit_case("no-categories", lambda d: d.update(categories=[], annotations=[]))
edit_case("empty-dataset", lambda d: d.update(images=[], annotations=[]))
edit_case("file-name-escapes-root", _set_img("file_name", "../../etc/passwd"))
edit_case("file-name-absolute", _set_img("file_name", "/etc/passwd"))
edit_case("box-zero-width-strict", _set_ann("bbox", [4, 4, 0, 10]), "--strict")
edit_case("box-negative-size-strict", _set_ann("bbox", [4, 4, -10, 10]), "--strict")
edit_case("box-nan-strict", _set_ann("bbox", [4, 4, math.nan, 10]), "--strict")
edit_case("box-infinite-strict", _set_ann("bbox", [4, 4, math.inf, 10]), "--strict")
edit_case("box-outside-image-strict", _set_ann("bbox", [500, 500, 20, 20]), "--strict")
edit_case("annotation-of-unknown-image-strict", _set_ann("image_id", 77), "--strict")


@case("json-truncated")
def _(tmp: Path, _: Trained) -> tuple[list, str]:
    truncate(train_json(tmp))
    return train(tmp), "instances_train.json"


def image_case(name: str, damage: Callable[[Path], None], *extra: str) -> None:
    @case(name)
    def _(tmp: Path, _: Trained) -> tuple[list, str]:
        damage(tmp / "data" / "train" / "b.png")
        return train(tmp, *extra), "b.png"


image_case("image-missing-strict", lambda p: p.unlink(), "--strict")
image_case("image-random-bytes-strict", lambda p: p.write_bytes(b"\x13" * 300), "--strict")
image_case("image-truncated-strict", truncate, "--strict")
image_case("image-empty-file-strict", lambda p: p.write_bytes(b""), "--strict")
image_case("image-is-text-strict", lambda p: p.write_text("not an image\n"), "--strict")
image_case("image-size-disagrees-strict", lambda p: write_image(p, (20, 20)), "--strict")


@case("all-images-missing")
def _(tmp: Path, _: Trained) -> tuple[list, str]:
    shutil.rmtree(tmp / "data" / "train")
    (tmp / "data" / "train").mkdir()
    return train(tmp), "instances_train.json"


@case("all-images-unreadable")
def _(tmp: Path, _: Trained) -> tuple[list, str]:
    for path in (tmp / "data" / "train").iterdir():
        path.write_bytes(b"GIF89a broken")
    return train(tmp), "instances_train.json"


@case("dataset-folder-missing")
def _(tmp: Path, _: Trained) -> tuple[list, str]:
    shutil.rmtree(tmp / "data")
    return train(tmp), str(tmp / "data")


@case("annotations-missing")
def _(tmp: Path, _: Trained) -> tuple[list, str]:
    shutil.rmtree(tmp / "data" / "annotations")
    return train(tmp), str(tmp / "data")


@case("image-folder-missing")
def _(tmp: Path, _: Trained) -> tuple[list, str]:
    shutil.rmtree(tmp / "data" / "train")
    return train(tmp), str(tmp / "data" / "train")


@case("pretrained-not-weights")
def _(tmp: Path, _: Trained) -> tuple[list, str]:
    (tmp / "w.pth").write_bytes(b"PK\x03\x04 not a zip")
    return train(tmp, "--pretrained", tmp / "w.pth"), "w.pth"


@case("pretrained-other-architecture")
def _(tmp: Path, _: Trained) -> tuple[list, str]:
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp / "w.pth")
    return train(tmp, "--pretrained", tmp / "w.pth"), "w.pth"


@case("train-output-exists")
def _(tmp: Path, t: Trained) -> tuple[list, str]:
    (tmp / "run").mkdir()
    shutil.copy(t.weights, tmp / "run" / "best.pt")
    return train(tmp), str(tmp / "run")


@case("train-output-unwritable")
def _(tmp: Path, _: Trained) -> tuple[list, str]:
    (tmp / "file").write_text("a file, not a folder")
    return ["train", "--data", tmp / "data", "--out", tmp / "file" / "run", *TINY], "run"


def evaluate(tmp: Path, model: Path, *extra: object) -> list:
    return ["eval", "--model", model, "--data", tmp / "data", "--warmup", "0", *extra]


def model_case(name: str, suffix: str, write: Callable[[Path, Trained], None]) -> None:
    @case(name)
    def _(tmp: Path, t: Trained) -> tuple[list, str]:
        path = tmp / f"model{suffix}"
        write(path, t)
        return evaluate(tmp, path), path.name


model_case("onnx-random-bytes", ".onnx", lambda p, _: p.write_bytes(b"\x08\x07garbage" * 50))
model_case("onnx-empty-file", ".onnx", lambda p, _: p.write_bytes(b""))
model_case("onnx-truncated", ".onnx", cut_copy("onnx"))
model_case("onnx-not-ours-no-metadata", ".onnx", foreign_onnx)
model_case("onnx-metadata-is-code", ".onnx", onnx_with_code_in_metadata)
model_case("engine-other-tensorrt", ".engine", engine_from_other_tensorrt)
model_case("model-unknown-suffix", ".tflite", lambda p, _: p.write_bytes(b"TFL3"))
model_case("pt-random-bytes", ".pt", lambda p, _: p.write_bytes(b"\x80\x02garbage" * 40))
model_case("pt-truncated", ".pt", cut_copy("weights"))
model_case("pt-not-ours", ".pt", lambda p, _: torch.save({"w": torch.zeros(2)}, p))
model_case("pt-lacks-weights", ".pt", edited_checkpoint(lambda c: c.pop("state_dict")))
model_case("pt-class-lists-disagree", ".pt", edited_checkpoint(three_classes))
model_case("pt-other-number-of-classes", ".pt", edited_checkpoint(built_for_three_classes))


@case("pt-malicious-pickle")
def _(tmp: Path, _: Trained) -> tuple[list, str]:
    write_malicious_pickle(tmp / "evil.pt", tmp / "pwned")
    return evaluate(tmp, tmp / "evil.pt"), "evil.pt"


@case("pt-classes-not-in-dataset")
def _(tmp: Path, t: Trained) -> tuple[list, str]:
    edit_json(tmp / "data" / "annotations" / "instances_val.json", _other_categories)
    return evaluate(tmp, t.weights), "instances_val.json"


def _other_categories(data: dict) -> None:
    data["categories"] = [{"id": 100, "name": "p"}, {"id": 200, "name": "q"}]
    for ann in data["annotations"]:
        ann["category_id"] = 100


@case("eval-json-syntax-error")
def _(tmp: Path, t: Trained) -> tuple[list, str]:
    (tmp / "data" / "annotations" / "instances_val.json").write_text('{"images": [{"id"')
    return evaluate(tmp, t.onnx), "instances_val.json"


@case("eval-file-name-escapes-root")
def _(tmp: Path, t: Trained) -> tuple[list, str]:
    edit_json(tmp / "data" / "annotations" / "instances_val.json", _set_img("file_name", "../x"))
    return evaluate(tmp, t.onnx), "instances_val.json"


@case("eval-corrupt-image-strict")
def _(tmp: Path, t: Trained) -> tuple[list, str]:
    truncate(tmp / "data" / "val" / "d.png")
    return evaluate(tmp, t.onnx, "--strict"), "d.png"


@case("eval-all-images-unreadable")
def _(tmp: Path, t: Trained) -> tuple[list, str]:
    for path in (tmp / "data" / "val").iterdir():
        path.write_bytes(b"")
    return evaluate(tmp, t.onnx), str(tmp / "data" / "val")


@case("eval-report-unwritable")
def _(tmp: Path, t: Trained) -> tuple[list, str]:
    (tmp / "file").write_text("x")
    return evaluate(tmp, t.onnx, "--json", tmp / "file" / "r.json"), "r.json"


@case("export-not-a-checkpoint")
def _(tmp: Path, _: Trained) -> tuple[list, str]:
    (tmp / "w.pt").write_text("hello")
    return ["export", "--weights", tmp / "w.pt", "--data", tmp / "data"], "w.pt"


@case("export-output-exists")
def _(tmp: Path, t: Trained) -> tuple[list, str]:
    (tmp / "model.onnx").write_bytes(b"keep me")
    args = ["export", "--weights", t.weights, "--out", tmp / "model.onnx", "--data", tmp / "data"]
    return args, "model.onnx"


@case("export-output-unwritable")
def _(tmp: Path, t: Trained) -> tuple[list, str]:
    (tmp / "file").write_text("x")
    out = tmp / "file" / "model.onnx"
    return ["export", "--weights", t.weights, "--out", out, "--data", tmp / "data"], "model.onnx"


@case("synth-output-exists")
def _(tmp: Path, _: Trained) -> tuple[list, str]:
    return ["data", "synth", "--out", tmp / "data", "--num-train", 1, "--num-val", 1], "data"


@case("synth-output-unwritable")
def _(tmp: Path, _: Trained) -> tuple[list, str]:
    (tmp / "file").write_text("x")
    return ["data", "synth", "--out", tmp / "file" / "d", "--num-train", 1, "--num-val", 1], "d"


# ----------------------------------------------------------------------------- the tests
def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_line(name: str, tmp_path: Path, trained: Trained) -> None:
    make_dataset(tmp_path / "data")
    args, names = CASES[name](tmp_path, trained)
    kept = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "w.pth"}
    assert_one_line_error(invoke(*args), names)
    assert not (tmp_path / "pwned").exists()  # nothing in a file was executed
    for path, content in kept.items():  # nothing that existed was overwritten or removed
        assert path.read_bytes() == content, path


# ----------------------------------------------------------------------------- what must work
def test_bad_files_in_a_good_dataset_are_skipped_with_a_count(trained: Trained) -> None:
    history = json.loads((trained.weights.parent / "history.json").read_text())
    assert history[0]["skipped_images"] == 1  # corrupt.png; missing.png dropped up front
    assert "corrupt.png: cannot read image" in trained.log and "image skipped" in trained.log
    assert "skipped 1 missing image files" in trained.log
    assert "dropped 2 degenerate boxes" in trained.log
    assert "v3.png: cannot read image" in trained.log  # the validation image


@pytest.mark.parametrize("mode", LOADABLE_MODES)
def test_image_modes_load(mode: str, tmp_path: Path, trained: Trained) -> None:
    make_split(tmp_path, "val", [(image_name(mode), 52, 38)], mode)
    report = tmp_path / "report.json"
    result = invoke("eval", "--model", trained.onnx, "--data", tmp_path, "--warmup", 0,
                    "--strict", "--json", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["num_images"] == 1


def test_size_not_divisible_by_the_largest_stride(trained: Trained, tmp_path: Path) -> None:
    """--img-size 100: feature maps and anchors use the same ceil division, so it trains,
    exports with PyTorch/ONNX parity (checked in the fixture) and evaluates."""
    assert torch.load(trained.weights, weights_only=True)["img_size"] == MIXED_SIZE
    for model in (trained.weights, trained.onnx):
        report = tmp_path / f"{model.suffix}.json"
        result = invoke("eval", "--model", model, "--data", trained.data, "--warmup", 0,
                        "--json", report)  # fmt: skip
        assert result.exit_code == 0, result.output
        assert json.loads(report.read_text())["skipped_images"] == 1  # v3.png


@pytest.mark.slow
def test_real_process_prints_one_line(tmp_path: Path) -> None:
    """Outside CliRunner too: stdout + stderr together are the one error line, exit code 2."""
    make_dataset(tmp_path / "data")
    truncate(tmp_path / "data" / "train" / "a.png")
    # --threads: the busy-machine warning (another line) is for runs that did not choose theirs
    args = [str(a) for a in train(tmp_path, "--strict", "--threads", "1")]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=120
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert "a.png: cannot read image" in lines[0] and "--strict" in lines[0]


def test_int8_export_without_a_train_split_fails_before_writing(
    tmp_path: Path, trained: Trained
) -> None:
    """Calibration reads the train split: its absence is found before model.onnx is written."""
    make_dataset(tmp_path / "data")
    train_json(tmp_path).unlink()
    out = tmp_path / "export" / "model.onnx"
    result = invoke("export", "--weights", trained.weights, "--out", out, "--data",
                    tmp_path / "data", "--precision", "int8")  # fmt: skip
    line = assert_one_line_error(result, "no train annotations")
    assert line.endswith("(int8 calibrates on the train split)")
    assert not out.parent.exists() or not any(out.parent.iterdir())

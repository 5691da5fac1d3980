"""The engine table (common/engines.py) drives every list of engines: export's --precision
choices and output files, compare's --backend names and model files, the model loaders, doctor."""

from __future__ import annotations

import importlib
from pathlib import Path

import click
import pytest

from common.engines import BACKENDS, ENGINES, EXPORT_PRECISIONS, engine_for_file
from deploy.backends.base import EngineBackend, RuntimeSettings
from deploy.errors import DeployError
from deploy.runtimes import open_deployed

# Written out by hand: what users type and what lands on disk today.
EXPECTED_BACKENDS = {
    "onnx": "model.onnx",
    "onnx-int8": "model.int8.onnx",
    "openvino": "model.fp32.xml",
    "openvino-bf16": "model.bf16.xml",
    "openvino-int8": "model.int8.xml",
    "tensorrt": "model.fp32.engine",
    "tensorrt-fp16": "model.fp16.engine",
    "tensorrt-int8": "model.int8.engine",
}


def _choices(command: click.Command, name: str) -> list[str]:
    param = next(p for p in command.params if p.name == name)
    assert isinstance(param.type, click.Choice)
    return list(param.type.choices)


def test_export_precision_choices_are_the_table_s() -> None:
    from pipeline.cli import cli

    assert EXPORT_PRECISIONS == ("fp32", "fp16", "int8", "bf16")
    assert _choices(cli.commands["export"], "precision") == list(EXPORT_PRECISIONS)


# Written out by hand: which engine's file each export option shapes.
EXPECTED_EXPORT_OPTIONS = {
    "--opset": {"onnx"},
    "--calibration": {"onnx", "openvino", "tensorrt"},
    "--calib-images": {"onnx", "openvino", "tensorrt"},
    "--max-ap-drop": {"onnx", "openvino"},
    "--int8-method": {"openvino"},
    "--batch-size": {"tensorrt"},
    "--workspace": {"tensorrt"},
}


def test_each_engine_lists_the_export_options_that_shape_its_file() -> None:
    listed: dict[str, set[str]] = {}
    for engine in ENGINES:
        for flag in engine.export_options:
            listed.setdefault(flag, set()).add(engine.name)
    assert listed == EXPECTED_EXPORT_OPTIONS
    assert [e.needs_gpu for e in ENGINES] == [False, False, True]


def test_compare_backends_and_their_files_come_from_the_table(tmp_path: Path) -> None:
    from pipeline.study.backends import deployed_model_path, parse_backends

    assert list(BACKENDS) == list(EXPECTED_BACKENDS)
    assert parse_backends(",".join(EXPECTED_BACKENDS)) == list(EXPECTED_BACKENDS)
    for backend, file_name in EXPECTED_BACKENDS.items():
        assert deployed_model_path(backend, tmp_path) == tmp_path / file_name


@pytest.mark.parametrize("backend", list(EXPECTED_BACKENDS))
def test_export_writes_the_file_compare_scores(backend: str, tmp_path: Path) -> None:
    """The file export names for an engine and precision is the one compare opens."""
    from export.options import ExportOptions
    from pipeline.exporting import _outputs
    from pipeline.study.backends import deployed_model_path

    engine, precision = BACKENDS[backend]
    options = ExportOptions(
        trt=engine.name == "tensorrt", openvino=engine.name == "openvino", precision=precision
    )
    written = _outputs(tmp_path / "model.onnx", options)
    assert deployed_model_path(backend, tmp_path) == written[-1]


def test_the_table_cannot_be_changed_in_place() -> None:
    """Every stage reads the same rows: one stage must not be able to edit them for the others."""
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        ENGINES[0].suffix = ".onnx2"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):  # one settings object serves many opens
        RuntimeSettings().provider = "cpu"  # type: ignore[misc]


def test_every_row_names_a_backend_class_that_opens_its_files() -> None:
    for engine in ENGINES:
        module_name, _, class_name = engine.backend.partition(":")
        backend = getattr(importlib.import_module(module_name), class_name)
        assert issubclass(backend, EngineBackend)
        assert backend.open is not EngineBackend.open, engine.name
        assert engine_for_file(engine.suffix.upper()) is engine
    assert engine_for_file(".pt") is None


def test_open_deployed_dispatches_on_the_suffix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each suffix reaches its row's class, with the settings; other suffixes are one line."""
    opened = []
    for engine in ENGINES:
        module_name, _, class_name = engine.backend.partition(":")
        module = importlib.import_module(module_name)

        def fake_open(cls: type, path: Path, settings: RuntimeSettings, name: str = engine.name):
            opened.append((name, path.name, settings.openvino_hint))
            return name

        monkeypatch.setattr(getattr(module, class_name), "open", classmethod(fake_open))
    settings = RuntimeSettings(openvino_hint="throughput")
    for engine in ENGINES:
        path = tmp_path / f"m{engine.suffix}"
        path.write_bytes(b"x")
        assert open_deployed(path, settings) == engine.name
    assert opened == [(e.name, f"m{e.suffix}", "throughput") for e in ENGINES]
    other = tmp_path / "m.tflite"
    other.write_bytes(b"x")
    with pytest.raises(DeployError, match=r"m.tflite: unsupported model file type '.tflite'; "
                       r"expected one of .onnx, .xml, .engine$"):  # fmt: skip
        open_deployed(other)


def test_eval_accepts_the_table_s_suffixes_and_a_checkpoint(tmp_path: Path) -> None:
    from pipeline.errors import PipelineError
    from pipeline.models import MODEL_SUFFIXES, load_predictor

    assert MODEL_SUFFIXES == (".pt", ".onnx", ".xml", ".engine")
    other = tmp_path / "m.tflite"
    other.write_bytes(b"x")
    with pytest.raises(PipelineError, match="expected one of .pt, .onnx, .xml, .engine"):
        load_predictor(other)


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # a broken GPU install counts as missing, as doctor says
        return False
    return True


@pytest.mark.parametrize("torch_cuda", [False, True])
def test_doctor_has_one_line_per_engine(torch_cuda: bool) -> None:
    from pipeline.doctor import engine_lines

    def runs_here(module: str, needs_gpu: bool) -> str:
        if not _importable(module):
            return "no (not installed)"
        return "no (needs an NVIDIA GPU)" if needs_gpu and not torch_cuda else "yes"

    assert engine_lines(torch_cuda) == {
        "engine onnx": f"ONNX Runtime, *.onnx, fp32 fp16 int8: {runs_here('onnxruntime', False)}",
        "engine openvino": f"OpenVINO, *.xml, fp32 bf16 int8: {runs_here('openvino', False)}",
        "engine tensorrt": f"TensorRT, *.engine, fp32 fp16 int8: {runs_here('tensorrt', True)}",
    }


@pytest.mark.parametrize("backend", ["openvino-int8", "tensorrt-fp16"])
def test_compare_checks_each_engine_s_own_requirement(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row's `requirement` is the check compare runs before training; its one line is
    re-worded for --backend."""
    from export.errors import ExportError
    from pipeline.errors import PipelineError
    from pipeline.study.backends import check_backend

    engine, _ = BACKENDS[backend]
    module_name, _, function = engine.requirement.partition(":")

    def missing() -> None:
        raise ExportError(f"{engine.export_flag}: {engine.runtime} is not installed here")

    monkeypatch.setattr(importlib.import_module(module_name), function, missing)
    with pytest.raises(PipelineError) as info:
        check_backend(backend)
    assert str(info.value) == (
        f"--backend {backend}: {engine.runtime} is not installed here; or use --backend onnx"
    )
    monkeypatch.setattr(importlib.import_module(module_name), function, lambda: None)
    check_backend(backend)  # available: nothing to say


def test_every_error_opening_a_model_names_the_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deploy.backends.onnxruntime as backend

    path = tmp_path / "m.onnx"
    path.write_bytes(b"x")
    for raised, said in (
        ("ONNX Runtime is not installed", f"{path}: ONNX Runtime is not installed"),
        (f"{path}: not an ONNX model", f"{path}: not an ONNX model"),
    ):

        def fail(cls: type, path: Path, settings: RuntimeSettings, raised: str = raised) -> None:
            raise DeployError(raised)

        monkeypatch.setattr(backend.OnnxRuntimePredictor, "open", classmethod(fail))
        with pytest.raises(DeployError) as info:
            open_deployed(path)
        assert str(info.value) == said


# A row a developer might add: written into the table's own source, as they would.
NEW_ROW = """    Engine(
        name="ncnn",
        runtime="ncnn",
        suffix=".param",
        precisions=("fp32", "fp16"),
        study_precisions=("fp32", "fp16"),
        needs_gpu=False,
        export_flag="--ncnn",
        export_help="an ncnn model (model.<precision>.param + .bin)",
        exporter="export.ncnn:export_ncnn",
        int8_from_qdq=False,
        export_options=("--opset",),
        backend="deploy.backends.ncnn:NcnnPredictor",
        python_module="ncnn",
        requirement="export.ncnn:require_ncnn",
    ),
"""
WITH_NEW_ROW = r"""
import json, sys, types
from pathlib import Path
import click
import common

source = Path("common/engines.py").read_text()
marker = "ENGINES: tuple[Engine, ...] = (\n"
table = types.ModuleType("common.engines")
sys.modules["common.engines"] = common.engines = table
exec(compile(source.replace(marker, marker + sys.argv[1]), "common/engines.py", "exec"), table.__dict__)

from export.options import ExportOptions
from pipeline.cli import cli
from pipeline.doctor import engine_lines
from pipeline.exporting import _outputs
from pipeline.study.backends import deployed_model_path, parse_backends

export = cli.commands["export"]
options = {p.name: p for p in export.params}
print(json.dumps({
    "flag": options["ncnn"].opts,
    "precisions": list(options["precision"].type.choices),
    "backends": parse_backends("ncnn,ncnn-fp16"),
    "files": [str(deployed_model_path(b, Path("run"))) for b in ("ncnn", "ncnn-fp16")],
    "written": [str(p) for p in _outputs(Path("run/model.onnx"), ExportOptions(ncnn=True, precision="fp16"))],
    "doctor": engine_lines(False)["engine ncnn"],
}))
"""


def test_a_new_row_is_an_export_flag_a_precision_a_backend_and_a_file() -> None:
    """Add a row to common/engines.py (and nothing else): export gets its flag and precisions,
    compare its backends and files, doctor its line."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", WITH_NEW_ROW, NEW_ROW],
        cwd=root, capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["flag"] == ["--ncnn"]
    assert found["precisions"] == ["fp32", "fp16", "int8", "bf16"]  # first seen order
    assert found["backends"] == ["ncnn", "ncnn-fp16"]
    assert found["files"] == ["run/model.fp32.param", "run/model.fp16.param"]
    assert found["written"] == ["run/model.onnx", "run/model.fp16.param"]
    assert found["doctor"] == "ncnn, *.param, fp32 fp16: no (not installed)"

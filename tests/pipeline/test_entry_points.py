"""Entry points nothing else runs: `pipeline doctor`, `pipeline losses`, `train --compile` and
`train --pretrained`. Each output is checked against values this file computes on its own
(ONNX Runtime's providers, torch's version, the loss dataclasses' fields, the weights written),
never against the code under test."""

from __future__ import annotations

import dataclasses
import importlib
import json
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime
import pytest
import torch
import torchvision

from common.errors import InputError
from tests.cli_support import TINY, invoke, make_tiny_dataset
from train.checkpoint import load_checkpoint, model_from_checkpoint
from train.losses.focal import FocalDetectionLoss, FocalStarDetectionLoss
from train.losses.ghm import GhmDetectionLoss
from train.losses.names import LOSS_NAMES
from train.losses.pisa import PisaCenterDetectionLoss, PisaDetectionLoss
from train.losses.sampling import OhemLoss, RandomSamplingLoss
from train.model.backbone import Backbone
from train.model.retinanet import RetinaDetector


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory)


# ------------------------------------------------------------------------------ pipeline doctor

DOCTOR_KEY_WIDTH = 24  # `pipeline doctor` prints "key" padded to 24, a space, then the value


def _doctor_lines() -> dict[str, str]:
    """`pipeline doctor` (exit 0: it is the Docker image's health check) as {key: value}."""
    result = invoke("doctor")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    return {line[:DOCTOR_KEY_WIDTH].strip(): line[DOCTOR_KEY_WIDTH + 1 :] for line in lines}


def _tensorrt_version() -> str | None:
    """TensorRT's version if it imports here; a broken install counts as missing."""
    try:
        return importlib.import_module("tensorrt").__version__
    except Exception:
        return None


def test_doctor_reports_this_machine() -> None:
    """What the image's health check prints is what this machine has, TensorRT/CUDA included."""
    report = _doctor_lines()
    cuda = torch.cuda.is_available()
    tensorrt = _tensorrt_version()
    expected = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": str(cuda),
        "gpu": torch.cuda.get_device_name(0) if cuda else "not available",
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": str(onnxruntime.get_available_providers()),
        "tensorrt": tensorrt or "not available",
    }
    assert {key: report.get(key) for key in expected} == expected
    try:  # OpenVINO's version and what its CPU plugin says this CPU runs, asked directly
        import openvino

        from deploy.backends.openvino import shared_core

        core = shared_core()
        capabilities = " ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        assert report["openvino"] == openvino.__version__.split("-")[0]
        assert report["openvino_cpu"] == capabilities and "FP32" in capabilities
    except ImportError:
        assert report["openvino"] == "not available"
    can_build = report["can build TensorRT"]
    if tensorrt is not None and cuda:
        assert can_build == "yes"
    else:  # says it cannot, and what it would take
        assert can_build.startswith("no (") and "pip install .[gpu]" in can_build


def test_doctor_survives_a_broken_tensorrt_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU package whose shared library is missing raises OSError on import; the health check
    must still pass and call TensorRT unavailable."""
    package = tmp_path / "tensorrt"
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise OSError('libnvinfer.so.10: cannot open shared object file')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    report = _doctor_lines()
    assert report["tensorrt"] == "not available"
    assert report["can build TensorRT"].startswith("no (")


# ------------------------------------------------------------------------------ pipeline losses

# Each registered loss: its dataclass, and the options its name changes from the dataclass's
# defaults (the README's table of losses).
LOSS_CLASSES: dict[str, tuple[type, dict[str, Any]]] = {
    "ce": (FocalDetectionLoss, {"alpha": -1.0, "gamma": 0.0}),
    "balanced-ce": (FocalDetectionLoss, {"alpha": 0.75, "gamma": 0.0}),
    "focal": (FocalDetectionLoss, {}),
    "focal-star": (FocalStarDetectionLoss, {}),
    "ghm": (GhmDetectionLoss, {}),
    "pisa": (PisaDetectionLoss, {}),
    "pisa-center": (PisaCenterDetectionLoss, {}),
    "random": (RandomSamplingLoss, {}),
    "ohem": (OhemLoss, {}),
}
GRAD_CLIP = {"ghm": 35.0, "pisa": 35.0, "pisa-center": 35.0}  # the papers' COCO configs
# A few defaults stated by the papers (and the README), so a changed dataclass default is seen.
PAPER_DEFAULTS = {
    "focal": {"alpha": 0.25, "gamma": 2.0},
    "focal-star": {"gamma": 4.0, "beta": 0.0},
    "pisa-center": {"center_margin": 0.05},
}


def _expected_options(name: str) -> dict[str, Any]:
    """{option: default} of a loss, from its dataclass's fields and its name's overrides."""
    cls, overrides = LOSS_CLASSES[name]
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return defaults | overrides


def _as_json(value: Any) -> Any:
    """How `pipeline losses --json` writes a value (tuples as lists, the rest by str)."""
    return json.loads(json.dumps(value, default=str))


def test_every_registered_loss_is_one_this_file_knows() -> None:
    """A new loss must be added to LOSS_CLASSES, or the listing tests would skip it."""
    assert list(LOSS_CLASSES) == list(LOSS_NAMES)


def test_losses_json_lists_every_option_with_its_dataclass_default() -> None:
    """`--loss-opt` is parsed against these defaults: the listing must show the real ones."""
    result = invoke("losses", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [entry["name"] for entry in listed] == list(LOSS_NAMES)
    for entry in listed:
        name = entry["name"]
        options = {option["name"]: option["default"] for option in entry["options"]}
        assert options == _as_json(_expected_options(name)), name
        assert options.items() >= PAPER_DEFAULTS.get(name, {}).items(), name
        assert entry["grad_clip"] == GRAD_CLIP.get(name), name
        assert entry["summary"], name
        fields = {f.name: f for f in dataclasses.fields(LOSS_CLASSES[name][0])}
        for option in entry["options"]:
            metadata = fields[option["name"]].metadata
            assert option["help"] == metadata["help"] and option["help"], (name, option)
            assert option["choices"] == list(metadata["choices"] or []), (name, option)


def _listing_blocks(text: str) -> dict[str, list[str]]:
    """Plain `pipeline losses`: {loss name: its indented option lines}."""
    blocks: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith(" "):
            current.append(line.strip())
        else:
            current = blocks.setdefault(line.split(":", 1)[0], [])
    return blocks


def test_losses_listing_shows_every_option_and_default_under_its_loss() -> None:
    """The plain listing (and `pipeline train --help`'s epilog) shows the same options."""
    result = invoke("losses")
    assert result.exit_code == 0, result.output
    blocks = _listing_blocks(result.output)
    assert list(blocks) == list(LOSS_NAMES)
    for name, lines in blocks.items():
        shown = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in lines}
        expected = _expected_options(name)
        assert set(shown) == set(expected), name
        for key, default in expected.items():
            value, rest = shown[key][: len(str(default))], shown[key][len(str(default)) :]
            assert value == str(default) and rest[:1] in ("", " "), (name, key, shown[key])


def test_losses_names_lists_only_those_in_the_order_asked_by_the_registry() -> None:
    result = invoke("losses", "ohem", "ghm")
    assert result.exit_code == 0, result.output
    blocks = _listing_blocks(result.output)
    assert list(blocks) == ["ghm", "ohem"]  # the registry's order, nothing else
    for name, lines in blocks.items():
        assert {line.split("=", 1)[0] for line in lines} == set(_expected_options(name))


def test_losses_unknown_name_is_one_line_listing_the_valid_ones() -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    result = CliRunner().invoke(cli, ["losses", "focal", "nope"])
    assert result.exit_code == 2
    assert "unknown nope; valid: ce, balanced-ce, focal" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_python_m_pipeline_ignores_a_train_py_in_the_current_folder(tmp_path: Path) -> None:
    """`python -m` puts the current folder first on sys.path; the project's packages win."""
    from tests.train.test_distributed_train import shadowing_folder

    folder = shadowing_folder(tmp_path)
    done = subprocess.run([sys.executable, "-m", "pipeline", "losses", "focal"], cwd=folder,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "focal" in done.stdout and "imported ./" not in done.stderr
    # and a plain `python` there does meet the shadow: the folder really is hostile
    shadowed = subprocess.run([sys.executable, "-c", "import train"], cwd=folder,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "imported ./train.py" in shadowed.stderr


def test_version_is_the_installed_packages() -> None:
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"pipeline, version {version('softsample-pipeline')}"


# ------------------------------------------------------------------------ pipeline train --compile


def _recording_backend(graphs: list[Any], runs: list[int]) -> Callable[..., Any]:
    """A torch.compile backend that keeps each graph TorchDynamo captured and counts its runs.

    It runs the captured graph as is: TorchDynamo still traces the model, but inductor's code
    generation (3.5 minutes for three steps on this 2-core machine) is left out.
    """

    def backend(graph_module: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        graphs.append(graph_module)

        def run(*args: Any) -> Any:
            runs.append(len(graphs))
            return graph_module.forward(*args)

        return run

    return backend


@pytest.mark.slow
def test_train_compile_runs_the_training_step_through_torch_compile(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--compile` hands the detector to torch.compile and trains through what it returns
    (TorchDynamo captures graphs, every step runs them); the checkpoint holds the plain model."""
    compiled: list[torch.nn.Module] = []
    graphs: list[Any] = []
    runs: list[int] = []
    real_compile = torch.compile

    def spy(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        compiled.append(model)
        return real_compile(model, backend=_recording_backend(graphs, runs))

    monkeypatch.setattr(torch, "compile", spy)
    torch._dynamo.reset()
    try:
        run = tmp_path / "run"
        result = invoke("train", "--data", tiny_data, "--out", run, *TINY, "--compile")
    finally:
        torch._dynamo.reset()
    assert result.exit_code == 0, result.output
    assert len(compiled) == 1 and isinstance(compiled[0], RetinaDetector), compiled
    steps = int(TINY[TINY.index("--max-steps") + 1])
    assert graphs and len(runs) >= steps, (len(graphs), runs)  # every step ran compiled code
    payload = load_checkpoint(run / "last.pt")  # the plain model is saved, not the wrapper
    assert not [key for key in payload["state_dict"] if "_orig_mod" in key]
    model_from_checkpoint(payload, run / "last.pt")


# ---------------------------------------------------------------------- pipeline train --pretrained

PRETRAINED_SEED = 1234


def _resnet18_weights(path: Path) -> dict[str, torch.Tensor]:
    """A torchvision resnet18 state dict, randomly initialized with a fixed seed, saved to path."""
    torch.manual_seed(PRETRAINED_SEED)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, path)
    return state


def _backbone_of(path: Path) -> dict[str, torch.Tensor]:
    """The backbone tensors of a checkpoint, named as in a torchvision resnet18 state dict."""
    prefix = "backbone.body."
    state = load_checkpoint(path)["state_dict"]
    return {
        key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)
    }


def test_train_pretrained_loads_the_files_backbone_weights(tiny_data: Path, tmp_path: Path) -> None:
    """One step at learning rate 0 with BatchNorm frozen changes nothing: the checkpoint's
    backbone must be the file's tensors exactly (the classifier `fc` is not part of it)."""
    weights = _resnet18_weights(tmp_path / "resnet18.pth")
    run = tmp_path / "run"
    frozen = ["--max-steps", "1", "--lr", "0", "--weight-decay", "0", "--freeze-bn"]
    result = invoke(
        "train", "--data", tiny_data, "--out", run, *TINY, *frozen, "--pretrained",
        tmp_path / "resnet18.pth",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    backbone = _backbone_of(run / "last.pt")
    expected = {key: value for key, value in weights.items() if not key.startswith("fc.")}
    assert set(backbone) == set(expected)
    different = [key for key in expected if not torch.equal(backbone[key], expected[key])]
    assert not different, different


def _training_must_not_start(*args: object) -> None:
    raise AssertionError("training started although the weights file matched nothing")


def test_train_pretrained_with_no_matching_key_is_one_clear_error(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights saved under another prefix (a wrapper module's) match no backbone key: one line,
    exit code 2, before any training (stopped here if it starts: it would be wasted time)."""
    from train.trainer import Trainer

    monkeypatch.setattr(Trainer, "fit", _training_must_not_start)
    path = tmp_path / "wrapped.pth"
    torch.save({f"encoder.{key}": value for key, value in _resnet18_weights(path).items()}, path)
    run = tmp_path / "run"
    result = invoke("train", "--data", tiny_data, "--out", run, *TINY, "--pretrained", path)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "no weights match" in lines[0], lines


def test_pretrained_file_matching_only_the_classifier_is_refused(tmp_path: Path) -> None:
    """Backbone keys renamed, `fc.*` left as is: torchvision's model takes fc, the detector
    throws fc away, so the backbone keeps its random initialization."""
    path = tmp_path / "renamed.pth"
    state = _resnet18_weights(path)
    renamed = {(k if k.startswith("fc.") else f"encoder.{k}"): v for k, v in state.items()}
    torch.save(renamed, path)
    with pytest.raises(InputError, match="no weights match"):
        Backbone("resnet18", path)  # what the trainer's model builder calls with --pretrained


def test_pretrained_partial_match_loads_what_matches_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """layer4 renamed away: layers 1-3 load from the file, layer4 keeps its initialization,
    and the log says how many tensors matched."""
    path = tmp_path / "partial.pth"
    state = _resnet18_weights(path)
    torch.save({k.replace("layer4.", "other4."): v for k, v in state.items()}, path)
    torch.manual_seed(123)
    with caplog.at_level("INFO", logger="train.model.backbone"):
        backbone = Backbone("resnet18", path)
    loaded = backbone.body.state_dict()
    assert torch.equal(loaded["layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])
    assert not torch.equal(loaded["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    kept = [k for k in loaded if not k.endswith("num_batches_tracked")]
    in_file = [k for k in kept if not k.startswith("layer4.")]
    assert f"loaded {len(in_file)} of {len(kept)} backbone tensors" in caplog.text
    assert "keep their random initialization" in caplog.text

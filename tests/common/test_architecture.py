"""The dependency rules of architecture.md, checked on the source: pipeline -> train, export,
deploy; export -> train; deploy never imports torch (nor train/export); nothing imports pipeline;
every stage may import common/, which imports none of them.

Every import statement counts, including the lazy ones inside functions.
"""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    # common/ is the bottom layer every stage may import: it imports none of them, nor torch
    "common": {"pipeline", "train", "export", "deploy", "torch", "torchvision", "onnx"},
    "train": {"pipeline", "export", "deploy"},
    "export": {"pipeline", "deploy"},
    "deploy": {"pipeline", "train", "export", "torch", "torchvision"},
}


def imported_top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_it_may(package):
    violations = {
        str(path.relative_to(ROOT)): sorted(imported_top_level_names(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {k: v for k, v in violations.items() if v} == {}


def private_names_from_other_packages(path: Path, package: str) -> list[str]:
    """`from other_package.module import _name`: another stage's private helper."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            if top != package and top in {*FORBIDDEN, "pipeline"}:
                found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return found


@pytest.mark.parametrize("package", sorted({*FORBIDDEN, "pipeline", "bench"}))
def test_no_stage_reaches_for_another_stage_s_private_names(package):
    """What a stage offers the others has a public name; its `_helpers` stay its own."""
    violations = {
        str(path.relative_to(ROOT)): private_names_from_other_packages(path, package)
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {k: v for k, v in violations.items() if v} == {}


STAGES_WITH_A_FACE = ("train", "export", "deploy")


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an import statement of `path` names (lazy ones included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def past_the_face(module: str, importer: str) -> bool:
    """Whether `module` lies inside another stage without being (under) one listed in its FACE."""
    stage, _, inner = module.partition(".")
    if stage not in STAGES_WITH_A_FACE or stage == importer or not inner:
        return False
    face = importlib.import_module(stage).FACE
    return not any(inner == entry or inner.startswith(entry + ".") for entry in face)


@pytest.mark.parametrize("package", ["pipeline", *STAGES_WITH_A_FACE])
def test_no_stage_reaches_past_another_stage_s_face(package):
    """What a stage offers the others is the modules its __init__ lists in FACE (bench/ times
    internals on purpose and is not held to it)."""
    violations = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if past_the_face(m, package)
        )
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {k: v for k, v in violations.items() if v} == {}


def test_the_face_checker_sees_a_module_past_it(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from train.step import TrainStep\n    import deploy.latency\n")
    found = {m for m in imported_modules(sample) if past_the_face(m, "pipeline")}
    assert found == {"train.step", "deploy.latency"}
    assert not past_the_face("train.model.anchors", "export")  # under the face's "model"
    assert not past_the_face("train.step", "train")  # a stage's own modules are its own


def test_the_private_name_checker_sees_one(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from export.onnx import _save_atomic, save\nfrom train.step import _x\n")
    assert private_names_from_other_packages(sample, "export") == ["train.step._x"]


def test_the_checker_sees_lazy_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import torch.nn\n    from pipeline.cli import cli\n")
    assert imported_top_level_names(sample) == {"torch", "pipeline"}


def test_the_cli_starts_without_importing_torch():
    """`pipeline --help` and friends answer at once; torch loads only for the work that needs it."""
    import subprocess
    import sys

    code = (
        "import sys, pipeline.cli; print(sorted(m for m in ('torch', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_cli_offers_exactly_the_registered_losses():
    import torch

    from train.assign import assign_anchors
    from train.losses import LOSSES
    from train.losses.names import LOSS_NAMES, REG_LOSS_NAMES
    from train.losses.regression import regression_per_anchor

    assert tuple(LOSSES) == LOSS_NAMES
    # every regression loss the CLI offers is one the losses compute
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assignment = assign_anchors(anchors, [anchors.clone()], [torch.tensor([0])])
    for kind in REG_LOSS_NAMES:
        assert regression_per_anchor(kind, torch.zeros(1, 1, 4), assignment).shape == (1, 1)


def test_every_user_facing_error_is_a_user_error() -> None:
    """The command line's boundary catches one base (common.errors.UserError): one line, exit 2."""
    from common.errors import InputError, UserError
    from deploy.errors import DeployError
    from pipeline.errors import PipelineError
    from train.errors import LossSettingError, NonFiniteLossError, TrainingError

    for error in (InputError, TrainingError, NonFiniteLossError, LossSettingError, DeployError,
                  PipelineError):  # fmt: skip
        assert issubclass(error, UserError), error

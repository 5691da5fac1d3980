"""Untrusted inputs and isolation: the main flow runs with sockets blocked, and no file we read
can run code (checkpoints with weights_only=True, metadata as JSON, no pickle/eval anywhere).
"""

from __future__ import annotations

import ast
import json
import socket
from pathlib import Path

import pytest

from common.errors import InputError
from tests.corpus import TINY, invoke, write_malicious_pickle
from train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "train", "export", "deploy")


@pytest.fixture
def network_attempts(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every outgoing connection or name lookup fails, and is recorded."""
    attempts: list[tuple] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise ConnectionRefusedError("network access is blocked in this test")

    for owner, name in [
        (socket.socket, "connect"),
        (socket.socket, "connect_ex"),
        (socket, "create_connection"),
        (socket, "getaddrinfo"),
    ]:
        monkeypatch.setattr(owner, name, refuse)
    return attempts


def test_blocking_works(network_attempts: list[tuple]) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("example.com", 80), timeout=1)
    assert network_attempts


def test_main_flow_without_network(tmp_path: Path, network_attempts: list[tuple]) -> None:
    """data synth -> train -> export -> eval (.pt and .onnx), all in this process."""
    data, run = tmp_path / "data", tmp_path / "run"
    steps = [
        ["data", "synth", "--out", data, "--num-train", 4, "--num-val", 2],
        ["train", "--data", data, "--out", run, *TINY],
        ["export", "--weights", run / "best.pt", "--data", data],
        ["eval", "--model", run / "best.pt", "--data", data, "--warmup", 0],
        ["eval", "--model", run / "model.onnx", "--data", data, "--warmup", 0,
         "--json", tmp_path / "report.json"],
    ]  # fmt: skip
    for args in steps:
        result = invoke(*args)
        assert result.exit_code == 0, (args[0], result.output)
    assert json.loads((tmp_path / "report.json").read_text())["metrics"]
    assert network_attempts == []


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(dotted name, node) of every call, e.g. ("torch.load", ...)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, func = [], node.func
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                found.append((".".join([func.id, *reversed(parts)]), node))
    return found


def _keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def test_no_file_we_read_can_run_code() -> None:
    """Static check of every module: torch.load only with weights_only=True; no pickle loads,
    eval/exec, unsafe yaml or numpy pickles."""
    forbidden = {"eval", "exec", "pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load"}
    problems, torch_loads = [], 0
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 20
    for path in files:
        for name, call in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{call.lineno} {name}"
            torch_loads += name == "torch.load"
            if name == "torch.load" and not _keyword_is_true(call, "weights_only"):
                problems.append(f"{where} without weights_only=True")
            if name in forbidden:
                problems.append(where)
            if name in ("np.load", "numpy.load") and _keyword_is_true(call, "allow_pickle"):
                problems.append(f"{where} with allow_pickle=True")
    assert problems == []
    assert torch_loads >= 2  # the checkpoint and backbone loaders were seen


def test_checkpoint_pickle_cannot_run_code(tmp_path: Path) -> None:
    write_malicious_pickle(tmp_path / "evil.pt", tmp_path / "pwned")
    with pytest.raises(InputError, match="evil.pt: not a loadable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()

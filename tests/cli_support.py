"""What the CLI tests share: a tiny training budget, an invoker, a tiny synthetic dataset."""

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pipeline.cli import cli

TINY = ["--epochs", "1", "--batch-size", "4", "--img-size", "64", "--max-steps", "3",
        "--fpn-channels", "16", "--head-convs", "1", "--workers", "0", "--warmup-iters", "1"]  # fmt: skip


def invoke(*args: object) -> Result:
    """Run `pipeline ARGS` in-process; exceptions other than exit codes propagate."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def make_tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 train + 6 val synthetic images through `pipeline data synth`."""
    root = tmp_path_factory.mktemp("data") / "synth"
    result = invoke("data", "synth", "--out", root, "--num-train", 12, "--num-val", 6)
    assert result.exit_code == 0, result.output
    return root


def free_port() -> int:
    """A localhost TCP port nobody listens on now, for a test's process group."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

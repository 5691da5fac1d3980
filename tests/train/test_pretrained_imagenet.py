"""`--pretrained imagenet`: torchvision's weights from the torch hub cache, never a surprise
download in a test, and one line naming the file and the folder when it cannot be fetched."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torchvision

from tests.cli_support import TINY, invoke, make_tiny_dataset
from train.model.backbone import Backbone

# torchvision's file name for resnet18's ImageNet weights (the end of its download URL)
RESNET18_FILE = "resnet18-f37072fd.pth"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache of this test's own."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # so get_dir() reads TORCH_HOME again
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_imagenet_reads_torchvisions_file_from_the_hub_cache(hub: Path) -> None:
    hub.mkdir(parents=True)
    torch.manual_seed(7)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, hub / RESNET18_FILE)
    loaded = Backbone("resnet18", pretrained=Path("imagenet")).body.state_dict()
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])
    assert torch.equal(loaded["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])


def test_offline_imagenet_is_one_line_naming_the_file_and_the_folder(
    hub: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_tiny_dataset(tmp_path_factory)

    def refuse(*args: object, **kwargs: object) -> None:
        raise ConnectionRefusedError("network access is blocked in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    out = tmp_path_factory.mktemp("run") / "run"
    result = invoke("train", "--data", data, "--out", out, *TINY, "--pretrained", "imagenet")
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert RESNET18_FILE in line and str(hub) in line
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in line
    assert not (out / "last.pt").exists()

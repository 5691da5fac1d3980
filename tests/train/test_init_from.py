"""--init-from: a run starts from another run's whole detector; a different class count starts
only the classifier's last layer fresh; anything else that does not fit is one line, exit 2."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from tests.cli_support import TINY, invoke, make_tiny_dataset
from train.checkpoint import checkpoint_payload, save_atomic
from train.config import TrainConfig
from train.model.retinanet import ModelConfig, RetinaDetector
from train.trainer import Trainer

SHAPE = {"img_size": 64, "fpn_channels": 16, "head_convs": 1}
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)  # RetinaNet's classifier prior, pi = 0.01


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory)


def _checkpoint(path: Path, classes: list[str], **shape: object) -> dict[str, torch.Tensor]:
    """A checkpoint whose every tensor holds a value of its own (i / 1000 for the i-th)."""
    model = RetinaDetector(ModelConfig(num_classes=len(classes), **{**SHAPE, **shape}))
    with torch.no_grad():
        for i, tensor in enumerate(model.state_dict().values()):
            tensor.fill_(i / 1000)
    ids = list(range(1, len(classes) + 1))
    save_atomic(checkpoint_payload(model, classes, ids, "focal", {}, {}), path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _trainer(data: Path, out: Path, init_from: Path) -> Trainer:
    config = TrainConfig(out=out, data=data, init_from=init_from, workers=0, device="cpu",
                         batch_size=4, epochs=1, **SHAPE)  # fmt: skip
    return Trainer(config)


def _names(data: Path) -> list[str]:
    import json

    return [c["name"] for c in json.loads((data / "annotations/instances_train.json").read_text())
            ["categories"]]  # fmt: skip


def test_every_tensor_comes_from_the_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    stored = _checkpoint(tmp_path / "a.pt", _names(tiny_data))
    model = _trainer(tiny_data, tmp_path / "run", tmp_path / "a.pt").model
    loaded = model.state_dict()
    assert loaded.keys() == stored.keys()
    assert all(torch.equal(loaded[k], v) for k, v in stored.items())


def test_another_class_count_starts_only_the_classifier_fresh(
    tiny_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    classes = len(_names(tiny_data))
    other = [f"class{i}" for i in range(classes + 2)]
    stored = _checkpoint(tmp_path / "more.pt", other)
    with caplog.at_level(logging.INFO, logger="train.fine_tune"):
        model = _trainer(tiny_data, tmp_path / "run", tmp_path / "more.pt").model
    loaded = model.state_dict()
    fresh = {"head.cls_out.weight", "head.cls_out.bias"}
    assert all(torch.equal(loaded[k], v) for k, v in stored.items() if k not in fresh)
    assert torch.allclose(loaded["head.cls_out.bias"], torch.tensor(PRIOR_BIAS))
    assert not torch.equal(
        loaded["head.cls_out.weight"], torch.zeros_like(model.head.cls_out.weight)
    )
    assert (
        f"{classes + 2} classes there, {classes} here: the classifier's last layer starts fresh"
        in caplog.text
    )
    assert f"initialized {len(stored) - 2} of {len(stored)} detector tensors" in caplog.text


@pytest.mark.parametrize(
    "shape,complaint",
    [
        ({"fpn_channels": 8}, "fpn_channels 8, not 16; pass --fpn-channels 8"),
        ({"head_convs": 2}, "head_convs 2, not 1; pass --head-convs 2"),
    ],
)
def test_another_architecture_is_one_line_naming_the_option(
    tiny_data: Path, tmp_path: Path, shape: dict, complaint: str
) -> None:
    _checkpoint(tmp_path / "other.pt", _names(tiny_data), **shape)
    out = tmp_path / "run"
    result = invoke("train", "--data", tiny_data, "--out", out, "--init-from",
                    tmp_path / "other.pt", *TINY)  # fmt: skip
    assert result.exit_code == 2
    assert complaint in result.output and "Traceback" not in result.output
    assert not (out / "last.pt").exists()


def test_init_from_with_pretrained_or_a_non_checkpoint_is_refused(
    tiny_data: Path, tmp_path: Path
) -> None:
    _checkpoint(tmp_path / "a.pt", _names(tiny_data))
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    both = invoke("train", "--data", tiny_data, "--out", tmp_path / "r1", "--init-from",
                  tmp_path / "a.pt", "--pretrained", tmp_path / "a.pt", *TINY)  # fmt: skip
    assert both.exit_code == 2 and "drop --pretrained" in both.output
    junk = invoke("train", "--data", tiny_data, "--out", tmp_path / "r2", "--init-from",
                  tmp_path / "notes.txt", *TINY)  # fmt: skip
    assert junk.exit_code == 2 and "notes.txt: not a loadable checkpoint" in junk.output


def test_fine_tuning_through_the_cli_trains_from_the_checkpoint(
    tiny_data: Path, tmp_path: Path
) -> None:
    _checkpoint(tmp_path / "a.pt", _names(tiny_data))
    out = tmp_path / "run"
    result = invoke("train", "--data", tiny_data, "--out", out, "--init-from", tmp_path / "a.pt",
                    *TINY, "--lr", "1e-6")  # fmt: skip
    assert result.exit_code == 0, result.output
    trained = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert trained["train_config"]["init_from"] == str(tmp_path / "a.pt")
    # a tiny learning rate: the weights are still near the checkpoint's, far from a fresh init
    conv1 = trained["state_dict"]["backbone.body.conv1.weight"]
    assert (conv1 - conv1.flatten()[0]).abs().max() < 1e-3

"""Torchvision backbones cut at C3..C5, built from scratch, from a local weights file, or from
torchvision's ImageNet weights.

`pretrained` is a path to a state dict saved from torchvision's model (or a checkpoint holding
one under "state_dict"/"model"), or "imagenet": torchvision's weights for the backbone, read from
the torch hub cache where torchvision keeps them. When they are not there, one download is
tried; offline that is one line naming the file and the folder to put it in.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from common.errors import InputError

log = logging.getLogger(__name__)

IMAGENET = "imagenet"
# name -> torchvision's ImageNet weights enum for it (its .url names the file in the hub cache)
IMAGENET_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "mobilenet_v3_large": torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
}

# name -> (constructor, names of the C3, C4, C5 layers, their channels)
BACKBONES: dict[str, tuple] = {
    "resnet18": (torchvision.models.resnet18, ("layer2", "layer3", "layer4"), (128, 256, 512)),
    "resnet34": (torchvision.models.resnet34, ("layer2", "layer3", "layer4"), (128, 256, 512)),
    "resnet50": (torchvision.models.resnet50, ("layer2", "layer3", "layer4"), (512, 1024, 2048)),
    "mobilenet_v3_large": (
        lambda **kw: torchvision.models.mobilenet_v3_large(**kw).features,
        ("6", "12", "16"),
        (40, 112, 960),
    ),
}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file (a state dict, or a checkpoint holding one)."""
    if not path.is_file():
        raise InputError(f"{path}: pretrained weights file not found (give a local .pth file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise InputError(f"{path}: not a loadable weights file ({type(exc).__name__})") from exc
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a state dict ({type(state).__name__})")
    return state


def _load_local_weights(body: nn.Module, path: Path, prefix: str) -> None:
    """Load `path` into the layers the detector keeps, counting what matched.

    Counted over the kept layers' parameters and statistics, not BatchNorm's
    `num_batches_tracked` counters (a file matching nothing would still "miss" fewer keys than
    there are) nor the classifier the detector drops (a file whose only match is `fc.*` loads
    nothing that is used). None matched is an error; a partial match is a warning.
    """
    state = {str(k).removeprefix(prefix): v for k, v in _read_state_dict(path).items()}
    wanted = [k for k in body.state_dict() if not k.endswith("num_batches_tracked")]
    matched = [k for k in wanted if k in state]
    if not matched:
        raise InputError(
            f"{path}: no weights match the backbone (0 of {len(wanted)} tensors; wrong "
            "architecture or key prefix?)"
        )
    try:
        body.load_state_dict({k: v for k, v in state.items() if k in body.state_dict()}, False)
    except RuntimeError as exc:  # shapes that do not fit: another architecture
        raise InputError(f"{path}: weights do not fit the backbone (wrong architecture?)") from exc
    log.info("%s: loaded %d of %d backbone tensors", path, len(matched), len(wanted))
    if len(matched) < len(wanted):
        missing = sorted(set(wanted) - set(matched))
        log.warning(
            "%s: %d backbone tensors not in the file keep their random initialization (first: %s)",
            path,
            len(missing),
            missing[0],
        )


def imagenet_weights_file(name: str) -> Path:
    """torchvision's ImageNet weights for backbone `name` in the torch hub cache; fetched once
    if missing. Offline: InputError naming the file and where to place it."""
    url = IMAGENET_WEIGHTS[name].url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if path.is_file():
        return path
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as exc:  # offline, proxy, HTTP error: urllib raises several types
        raise InputError(
            f"--pretrained imagenet: {path.name} is not in {path.parent} and cannot be "
            f"downloaded ({type(exc).__name__}); download {url} and place it there, or pass "
            "its path to --pretrained"
        ) from exc
    return path


class Backbone(nn.Module):
    """Returns the C3, C4, C5 feature maps (strides 8, 16, 32)."""

    def __init__(self, name: str = "resnet18", pretrained: Path | None = None) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise InputError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
        build, layer_names, channels = BACKBONES[name]
        net = build(weights=None)
        prefix = "features." if isinstance(net, nn.Sequential) else ""
        self.body = IntermediateLayerGetter(net, {n: str(i) for i, n in enumerate(layer_names)})
        if pretrained is not None and str(pretrained) == IMAGENET:
            pretrained = imagenet_weights_file(name)
        if pretrained is not None:
            _load_local_weights(self.body, Path(pretrained), prefix)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x).values())

"""Torchvision backbones cut at C3..C5, built from scratch or from a LOCAL weights file.

Nothing is downloaded: `pretrained` is a path to a state dict saved from torchvision's model (or a
checkpoint holding one under "state_dict"/"model").
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from train.errors import InputError

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


def _load_local_weights(model: nn.Module, path: Path) -> None:
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
    prefix = "features." if isinstance(model, nn.Sequential) else ""
    state = {str(k).removeprefix(prefix): v for k, v in state.items()}
    try:
        missing, _ = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit: another architecture
        raise InputError(f"{path}: weights do not fit the backbone (wrong architecture?)") from exc
    if len(missing) == len(model.state_dict()):
        raise InputError(f"{path}: no weights match the backbone (wrong architecture?)")


class Backbone(nn.Module):
    """Returns the C3, C4, C5 feature maps (strides 8, 16, 32)."""

    def __init__(self, name: str = "resnet18", pretrained: Path | None = None) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise InputError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
        build, layer_names, channels = BACKBONES[name]
        net = build(weights=None)
        if pretrained is not None:
            _load_local_weights(net, Path(pretrained))
        self.body = IntermediateLayerGetter(net, {n: str(i) for i, n in enumerate(layer_names)})
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x).values())

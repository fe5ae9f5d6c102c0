"""Model registry: every model adapts to the data set's channels and class count; weights only from a local file."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from ..errors import QdgError
from .digits_resnet import DigitsResNet
from .mnist_cnn import MnistCNN
from .vit_mnist import vit_mnist


def _resnet(depth: int):
    def build(in_channels: int, num_classes: int) -> nn.Module:
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        net.fc = nn.Linear(net.fc.in_features, num_classes)
        return net
    return build


MODELS = {
    "digits-resnet": lambda in_channels, num_classes: DigitsResNet(in_channels, num_classes),
    "mnist-cnn": lambda in_channels, num_classes: MnistCNN(in_channels, num_classes),
    "resnet18": _resnet(18),
    "resnet50": _resnet(50),
    "vit-mnist": lambda in_channels, num_classes: vit_mnist(in_channels, num_classes),  # timm ViT, 7×7 patches
}


def available_models() -> list[str]:
    return list(MODELS)


def build_model(name: str, in_channels: int, num_classes: int, weights: str | Path | None = None) -> nn.Module:
    try:
        net = MODELS[name](in_channels, num_classes)
    except KeyError:
        raise QdgError(f"unknown model {name!r}; available: {', '.join(MODELS)}") from None
    if weights:
        load_pretrained(net, weights)
    return net


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file, never executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise QdgError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "Weights only load failed" in str(e):  # not torch's advice to unpickle arbitrary objects: never done here
            raise QdgError(f"cannot read weights {path}: not a plain tensor state dict (or damaged); qdg-deploy never "
                           f"unpickles arbitrary objects: give a .safetensors file or torch.save(model.state_dict())"
                           ) from None
        raise QdgError(f"cannot read weights {path}: {e}".splitlines()[0]) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise QdgError(f"{path} does not hold a state dict")
    return state


def load_pretrained(net: nn.Module, path: str | Path) -> None:
    """Load backbone weights; tensors whose shape differs (a new classifier, other input channels) are skipped."""
    state = load_state_file(path)
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise QdgError(f"no tensor in {path} matches the model's parameter names and shapes")
    net.load_state_dict(usable, strict=False)

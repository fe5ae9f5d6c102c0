"""Model registry: every model adapts to the data set's channels and class count. Short names (below), any
torchvision classification model as `tv:NAME` and any timm model as `timm:NAME` (models/zoo.py); weights from a
local file, or (`pretrained`) the library's own ImageNet weights through its own cache."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..errors import QdgError
from . import zoo
from .digits_resnet import DigitsResNet
from .mnist_cnn import MnistCNN


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
}


def available_models() -> list[str]:
    return list(MODELS)


def build_model(name: str, in_channels: int, num_classes: int, weights: str | Path | None = None,
                pretrained: bool = False) -> nn.Module:
    """The network `name` for `in_channels` and `num_classes`; `weights`: a local state dict (backbone loaded,
    tensors of another shape skipped); `pretrained`: the library's default ImageNet weights (tv:/timm: only)."""
    check_arch(name, weights, pretrained)
    if name.startswith((zoo.TV, zoo.TIMM)):
        net = zoo.build_zoo(name, in_channels, num_classes, pretrained)
    else:
        net = MODELS[name](in_channels, num_classes)
    if weights:
        load_pretrained(net, weights)
    return net


def check_arch(name: str, weights=None, pretrained: bool = False) -> None:
    """QdgError for a name no library has (the closest ones listed) or a --pretrained it cannot honour."""
    if weights and pretrained:
        raise QdgError("--weights FILE and --pretrained both give the starting weights: choose one")
    if name.startswith((zoo.TV, zoo.TIMM)):
        zoo.check_name(name)
    elif name not in MODELS:
        raise QdgError(f"unknown model {name!r}{unknown_hint(name)}")
    elif pretrained:
        hint = f" (as tv:{name}, torchvision's {name})" if name in zoo.tv_names() else ""
        raise QdgError(f"--pretrained loads a library's ImageNet weights: give a tv:NAME or timm:NAME "
                       f"architecture{hint}, or --weights FILE for {name}")


def unknown_hint(name: str) -> str:
    """The closest short names, tv: and timm: names to an unknown bare name."""
    tv = [n for n in zoo.tv_names() if n == name]
    if tv:
        return f": torchvision's is tv:{name}"
    choices = {**{n: n for n in MODELS}, **{n: zoo.TV + n for n in zoo.tv_names()},
               **{n: zoo.TIMM + n for n in zoo.timm_names() if n not in zoo.tv_names()}}
    import difflib
    near = [choices[n] for n in difflib.get_close_matches(name, list(choices), n=5, cutoff=0.0)]
    return (f"; closest: {', '.join(near)}" if near else f"; short names: {', '.join(MODELS)}") + \
        " (or tv:NAME, timm:NAME: `qdg-deploy models` lists them)"


def weights_name_hint(path: str | Path) -> str:
    """For a torchvision weights name given where a file is expected (IMAGENET1K_V1, DEFAULT): a pointer to
    --pretrained; '' otherwise."""
    if re.fullmatch(r"DEFAULT|[A-Z0-9_]+_V\d+", str(path)):
        return (f" ({path} looks like a torchvision weights name, not a file: --pretrained with --arch tv:NAME "
                f"loads the library's default ImageNet weights)")
    return ""


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file, never executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise QdgError(f"weights file not found: {path}{weights_name_hint(path)}")
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

"""Model registry: every model adapts to the data set's channels and class count. Short names (below), any
torchvision classification model as `tv:NAME` and any timm model as `timm:NAME` (models/zoo.py); weights from a
local file, or (`pretrained`) the library's own ImageNet weights through its own cache."""

from __future__ import annotations

from pathlib import Path

import torchvision
from torch import nn

from ..errors import QdgError
from . import zoo
from .digits_resnet import DigitsResNet
from .mnist_cnn import MnistCNN
from .state import load_state_file
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


def build_model(
    name: str, in_channels: int, num_classes: int, weights: str | Path | None = None, pretrained: bool = False
) -> nn.Module:
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
        raise QdgError(
            f"--pretrained loads a library's ImageNet weights: give a tv:NAME or timm:NAME "
            f"architecture{hint}, or --weights FILE for {name}"
        )


def unknown_hint(name: str) -> str:
    """The closest short names, tv: and timm: names to an unknown bare name."""
    tv = [n for n in zoo.tv_names() if n == name]
    if tv:
        return f": torchvision's is tv:{name}"
    choices = {
        **{n: n for n in MODELS},
        **{n: zoo.TV + n for n in zoo.tv_names()},
        **{n: zoo.TIMM + n for n in zoo.timm_names() if n not in zoo.tv_names()},
    }
    import difflib

    near = [choices[n] for n in difflib.get_close_matches(name, list(choices), n=5, cutoff=0.0)]
    return (
        f"; closest: {', '.join(near)}" if near else f"; short names: {', '.join(MODELS)}"
    ) + " (or tv:NAME, timm:NAME: `qdg-deploy models` lists them)"


def load_pretrained(net: nn.Module, path: str | Path) -> None:
    """Load backbone weights; tensors whose shape differs (a new classifier, other input channels) are skipped."""
    state = load_state_file(path)
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise QdgError(f"no tensor in {path} matches the model's parameter names and shapes")
    net.load_state_dict(usable, strict=False)


def backbone_input(hp: dict, image_size: int | None) -> None:
    """Folder data sets read by a tv:/timm: backbone take its pretrained input pipeline (size, resize, crop,
    interpolation, mean/std; a given `image_size` overrides the size): hp["input"], which every later reader of
    the data (eval, export, bench) rebuilds it from. A model name the library lacks is refused here, before any
    work. rotated-mnist keeps its own pipeline."""
    check_arch(hp["arch"], hp.get("weights"), bool(hp.get("pretrained")))
    if hp["dataset"] == "rotated-mnist" or hp.get("input"):
        return
    cfg = zoo.input_config(hp["arch"], image_size)
    if cfg is not None:
        hp["input"], hp["image_size"] = cfg, cfg["size"]

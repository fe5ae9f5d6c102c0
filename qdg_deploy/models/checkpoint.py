"""The float network `calibrate` starts from: a float run directory, or a local weights file for a registered arch.

Weights files are read without executing code (safetensors, or torch.load(weights_only=True)). Accepted key
layouts: the model's own (a torchvision ResNet's `state_dict()`, a float run's model.safetensors); the same under
`module.` (DataParallel / DDP); a DomainBed or SWAD checkpoint (`{"model_dict": …}`) whose featurizer is under
`network.0.network.` or `featurizer.network.` and whose classifier is `network.1.` or `classifier.`. The classifier
must already have the data set's class count: calibration does not train one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import QdgError
from ..models import build_model, load_state_file

_FEATURIZER = ("network.0.network.", "featurizer.network.", "network.0.", "featurizer.")
_CLASSIFIER = ("network.1.", "classifier.")


def _rename(key: str, own: dict, head: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    if key in own:
        return key
    for p in _CLASSIFIER:
        if key.startswith(p):
            return f"{head}.{key[len(p) :]}"
    for p in _FEATURIZER:
        if key.startswith(p) and key[len(p) :] in own:
            return key[len(p) :]
    return key


def adapt_state_dict(state: dict, net: nn.Module, path: str | Path, arch: str) -> dict[str, torch.Tensor]:
    """`state` renamed onto `net`'s keys (layouts above); a QdgError naming what is missing or misshapen."""
    if isinstance(state.get("model_dict"), dict):  # DomainBed / SWAD's saved checkpoint
        state = state["model_dict"]
    own = net.state_dict()
    head = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
    mapped = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            mapped.setdefault(_rename(k, own, head), v)
    missing = [k for k in own if k not in mapped]
    shapes = [
        f"{k} {list(mapped[k].shape)} (the model's {list(v.shape)})"
        for k, v in own.items()
        if k in mapped and mapped[k].shape != v.shape
    ]
    if missing or shapes:
        what = (
            f"{len(missing)} tensor(s) missing, e.g. {', '.join(missing[:3])}"
            if missing
            else f"shape mismatch: {'; '.join(shapes[:2])}"
        )
        raise QdgError(
            f"{path} does not fit --arch {arch} ({what}); accepted layouts: the model's own state dict, "
            f"under module., or a DomainBed/SWAD model_dict; the classifier must have the data set's "
            f"class count"
        )
    return {k: mapped[k] for k in own}


def float_from_file(path: str | Path, arch: str, in_channels: int, num_classes: int) -> nn.Module:
    net = build_model(arch, in_channels, num_classes)
    net.load_state_dict(adapt_state_dict(load_state_file(path), net, path, arch))
    return net.eval()

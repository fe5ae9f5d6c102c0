"""Reading a state dict from a file without executing code from it (safetensors, or torch.load(weights_only=True))."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import QdgError


def weights_name_hint(path: str | Path) -> str:
    """For a torchvision weights name given where a file is expected (IMAGENET1K_V1, DEFAULT): a pointer to
    --pretrained; '' otherwise."""
    if re.fullmatch(r"DEFAULT|[A-Z0-9_]+_V\d+", str(path)):
        return (
            f" ({path} looks like a torchvision weights name, not a file: --pretrained with --arch tv:NAME "
            f"loads the library's default ImageNet weights)"
        )
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
            raise QdgError(
                f"cannot read weights {path}: not a plain tensor state dict (or damaged); qdg-deploy never "
                f"unpickles arbitrary objects: give a .safetensors file or torch.save(model.state_dict())"
            ) from None
        raise QdgError(f"cannot read weights {path}: {e}".splitlines()[0]) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise QdgError(f"{path} does not hold a state dict")
    return state

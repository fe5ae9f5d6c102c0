"""Swap a module for one of another class that shares its parameters, buffers and children.

The quantized network is the float one with some modules replaced by subclasses (QConv2d for Conv2d, QBasicBlock
for BasicBlock, ...) built from the float module's own tensors, so its state dict keeps the float keys and adds
only quantizer entries; `strip_quantizers` swaps them back the same way.
"""

from __future__ import annotations

from torch import nn


def recast(module: nn.Module, cls: type[nn.Module], drop: tuple[str, ...] = ()) -> nn.Module:
    """A new `cls` object holding `module`'s state (the same Parameter objects); `drop` names attributes and
    children it does not take over."""
    new = cls.__new__(cls)
    new.__dict__.update({k: v for k, v in module.__dict__.items() if k not in drop})
    # fresh dicts: what the new module adds (quantizers) must not appear on the old one
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = {k: v for k, v in module._modules.items() if k not in drop}
    return new


def parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, attr = name.split(".")
    parent = model
    for p in path:
        parent = getattr(parent, p)
    return parent, attr


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent, attr = parent_of(model, name)
    setattr(parent, attr, new)
    return new

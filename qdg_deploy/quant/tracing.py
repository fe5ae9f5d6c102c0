"""The model's torch.fx graph and the few questions asked of it: which BatchNorm follows a conv, which layers read a
ReLU's output."""

from __future__ import annotations

import inspect
import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..errors import QdgError
from .layers import QConv2d, QLinear
from .quantizers import Quantizer

# Ops that keep a ReLU's output non-negative and its zero at code 0, so a zero point of 0 stays exact.
_PASS_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout)
_PASS_FUNCS = {torch.flatten, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.dropout, operator.getitem}
_PASS_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "contiguous"}


class Tracer(torch.fx.Tracer):
    """Keep QConv2d / QLinear, standalone quantizers (residual Adds) and the norm and pooling layers (also our
    eval-matched subclasses) whole: fx would otherwise trace into them."""

    def is_leaf_module(self, m, qualname):
        if isinstance(m, nn.BatchNorm2d) and "act" in m._modules:  # timm's BatchNormAct2d: traced into (its
            return False  # F.batch_norm is then refused by name; quant/mobile.adapt_timm splits it first)
        return (
            isinstance(m, (QConv2d, QLinear, Quantizer, nn.GroupNorm, nn.BatchNorm2d, nn.AdaptiveAvgPool2d))
            or getattr(m, "fx_leaf", False)  # modules that say so (quant/transformer.py's QMatMul)
            or isinstance(m, _ACTIVATIONS)
            or super().is_leaf_module(m, qualname)
        )


# activations kept whole, also the eval-matched and quantized ones of quant/mobile.py
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU)


def _defaults(model: nn.Module) -> dict | None:
    """forward's optional arguments at their defaults (timm's attn_mask=None, ...): traced as constants, so the
    graph has one input and a None mask stays None."""
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    found = {
        p.name: p.default
        for p in params
        if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return found or None


def trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.GraphModule(model, Tracer().trace(model, concrete_args=_defaults(model)))
    except Exception as e:  # fx raises many types
        raise QdgError(f"cannot trace the model with torch.fx: {str(e).splitlines()[0]}") from None


def is_relu(n: torch.fx.Node, mods, relu6: bool = False) -> bool:
    """A ReLU node (module, function or method); with relu6, ReLU6 counts too (non-negative output)."""
    modules, funcs = ((nn.ReLU, nn.ReLU6), {F.relu, torch.relu, F.relu6}) if relu6 else (nn.ReLU, {F.relu, torch.relu})
    return (
        (n.op == "call_module" and isinstance(mods.get(n.target), modules))
        or (n.op == "call_function" and n.target in funcs)
        or (n.op == "call_method" and n.target in ("relu", "relu_"))
    )


def _passes(n: torch.fx.Node, mods) -> bool:
    return (
        (n.op == "call_module" and isinstance(mods.get(n.target), _PASS_MODULES))
        or (n.op == "call_function" and n.target in _PASS_FUNCS)
        or (n.op == "call_method" and n.target in _PASS_METHODS)
    )


def relu_fed_layers(model: nn.Module) -> set[str]:
    """Names of Conv2d/Linear modules whose input comes from a ReLU (through pooling/reshapes only).

    A model that cannot be traced gets an empty set (every activation quantizer then learns its zero point,
    which is always correct, only slower on ONNX Runtime).
    """
    try:
        gm = trace(model)
    except QdgError:
        return set()
    mods = dict(gm.named_modules())
    found = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), (nn.Conv2d, nn.Linear)):
            continue
        src = node.args[0] if node.args else None
        while isinstance(src, torch.fx.Node):
            if is_relu(src, mods, relu6=True):
                found.add(node.target)
                break
            if not _passes(src, mods) or not src.args:
                break
            src = src.args[0]
    return found


def conv_bn_pairs(gm: torch.fx.GraphModule, mods) -> dict[str, torch.fx.Node]:
    """Conv2d fx node name -> the BatchNorm2d node that alone reads its output (foldable into the conv)."""
    out = {}
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(mods.get(n.target), nn.BatchNorm2d):
            src = n.args[0]
            if (
                isinstance(src, torch.fx.Node)
                and src.op == "call_module"
                and isinstance(mods.get(src.target), nn.Conv2d)
                and len(src.users) == 1
            ):
                out[src.name] = n
    return out

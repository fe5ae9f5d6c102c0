"""Swap a float model's Conv2d / Linear layers for quantized ones, as a scheme says."""

from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .layers import QUANT_LAYERS, ExportMatchedAvgPool, ExportMatchedGroupNorm, QConv2d, QLinear, QuantMixin
from .schemes import Scheme

_LAYER_KIND = {nn.Conv2d: "conv", nn.Linear: "linear"}
# Ops that keep a ReLU's output non-negative and its zero at code 0, so a zero point of 0 stays exact.
_PASS_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout)
_PASS_FUNCS = {torch.flatten, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.dropout}
_PASS_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "contiguous"}
_RELU_FUNCS = {F.relu, torch.relu, F.relu6}


def relu_fed_layers(model: nn.Module) -> set[str]:
    """Names of Conv2d/Linear modules whose input comes from a ReLU (through pooling/reshapes only).

    Traced with torch.fx; a model that cannot be traced gets an empty set (every activation quantizer
    then learns its zero point, which is always correct, only slower on ONNX Runtime).
    """
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:
        return set()
    mods = dict(gm.named_modules())
    found = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), tuple(_LAYER_KIND)):
            continue
        src = node.args[0] if node.args else None
        while isinstance(src, torch.fx.Node):
            if _is_relu(src, mods):
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
            if (isinstance(src, torch.fx.Node) and src.op == "call_module"
                    and isinstance(mods.get(src.target), nn.Conv2d) and len(src.users) == 1):
                out[src.name] = n
    return out


def bn_following(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """Conv2d module name -> the BatchNorm2d folded into it on export ({} if fx cannot trace the model)."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:
        return {}
    mods = dict(gm.named_modules())
    nodes = {n.name: n for n in gm.graph.nodes}
    return {nodes[c].target: mods[bn.target] for c, bn in conv_bn_pairs(gm, mods).items()}


def _is_relu(n: torch.fx.Node, mods) -> bool:
    return ((n.op == "call_module" and isinstance(mods.get(n.target), (nn.ReLU, nn.ReLU6)))
            or (n.op == "call_function" and n.target in _RELU_FUNCS)
            or (n.op == "call_method" and n.target in ("relu", "relu_")))


def _passes(n: torch.fx.Node, mods) -> bool:
    return ((n.op == "call_module" and isinstance(mods.get(n.target), _PASS_MODULES))
            or (n.op == "call_function" and n.target in _PASS_FUNCS | {operator.getitem})
            or (n.op == "call_method" and n.target in _PASS_METHODS))


def eligible_layers(model: nn.Module, scheme: Scheme) -> list[str]:
    """Names of the layers the scheme quantizes, in registration (forward) order."""
    layers = [(name, m) for name, m in model.named_modules() if type(m) in _LAYER_KIND]
    keep = []
    for i, (name, m) in enumerate(layers):
        if _LAYER_KIND[type(m)] not in scheme.layers:
            continue
        if (i == 0 and not scheme.quantize_first) or (i == len(layers) - 1 and not scheme.quantize_last):
            continue
        keep.append(name)
    return keep


def quantize_model(model: nn.Module, scheme: Scheme) -> nn.Module:
    """Replace eligible layers in place (sharing their weight Parameters); returns the model."""
    names = eligible_layers(model, scheme)
    bn_of = bn_following(model) if scheme.act is not None else {}
    after_relu = relu_fed_layers(model) if scheme.act and scheme.act.zero_point == "relu" else set()
    first = next((n for n, m in model.named_modules() if type(m) in _LAYER_KIND), None)
    for name in names:
        parent, attr = _parent(model, name)
        layer = getattr(parent, attr)
        act = scheme.act if (scheme.act_first or name != first) else None
        setattr(parent, attr, QUANT_LAYERS[type(layer)].from_float(layer, scheme.weight, act,
                                                                  after_relu=name in after_relu))
    if scheme.residual and scheme.act is not None:
        from .residual import quantize_residual_blocks
        quantize_residual_blocks(model, scheme.act)
    if scheme.int_bias and scheme.act is not None:
        from .bias import attach_int_bias
        attach_int_bias(model, bn_of)
    if scheme.act is not None:
        from .exact import attach_exact
        attach_exact(model, bn_of)
    for m in model.modules():  # eval arithmetic as the exported graph's (same state dict)
        if type(m) is nn.GroupNorm:
            m.__class__ = ExportMatchedGroupNorm
        elif type(m) is nn.AdaptiveAvgPool2d:
            m.__class__ = ExportMatchedAvgPool
    if scheme.int_bias and scheme.act is not None:
        from .graph import attach_fusion
        attach_fusion(model)  # layers and Adds ORT runs as integer kernels compute as those kernels in eval
    return model


def _parent(model: nn.Module, name: str):
    *path, attr = name.split(".")
    parent = model
    for p in path:
        parent = getattr(parent, p)
    return parent, attr


def quant_layers(model: nn.Module) -> dict[str, QuantMixin]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (QConv2d, QLinear))}


def is_quantized(model: nn.Module) -> bool:
    return bool(quant_layers(model))


def model_size(model: nn.Module) -> dict:
    """fp32 bytes, packed bytes (codes at their true bit-width plus scales) and parameter count.

    Quantizer steps/zero points count as float32 in packed bytes; buffers such as BN statistics count too.
    """
    qlayers = quant_layers(model)
    qweights = {id(m.weight): m for m in qlayers.values() if m.weight_quant is not None}
    params = 0
    fp32 = packed = 0.0
    for name, p in model.named_parameters():
        if ".weight_quant." in name or ".act_quant." in name or ".add_quant." in name or ".id_quant." in name:
            packed += p.numel() * 4
            continue
        params += p.numel()
        fp32 += p.numel() * 4
        layer = qweights.get(id(p))
        packed += p.numel() * layer.weight_quant.spec.bits / 8 if layer is not None else p.numel() * 4
    for name, b in model.named_buffers():
        if b.is_floating_point():
            fp32 += b.numel() * 4
            packed += b.numel() * 4
    return {"params": params, "fp32_bytes": int(fp32), "packed_bytes": int(round(packed))}

"""The quantized model's fx graph, and which layers ONNX Runtime CPU turns into integer kernels.

ORT fuses DequantizeLinear → Conv → QuantizeLinear into QLinearConv (and DQ → Add → Q into QLinearAdd) when the op's
output goes only to one QuantizeLinear, possibly through a ReLU that the Q's zero point at the type's minimum
(unsigned, zero point 0) lets it drop, and through a MaxPool (max commutes with a monotone quantizer, so the
writer places the Q before the pool). `attach_fusion` finds those layers and Adds in a model trained for ORT
(scheme `ort`) and hands each its output quantizer, so that the eval forward can compute what the integer
kernel computes (quant/exact.py) and the exporter writes the graph ORT fuses.
"""

from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..errors import QdgError
from .layers import QConv2d, QLinear
from .quantizers import Quantizer


class Tracer(torch.fx.Tracer):
    """Keep QConv2d / QLinear, standalone quantizers (residual Adds) and the norm and pooling layers (also our
    eval-matched subclasses) whole: fx would otherwise trace into them."""

    def is_leaf_module(self, m, qualname):
        return (isinstance(m, (QConv2d, QLinear, Quantizer, nn.GroupNorm, nn.BatchNorm2d, nn.AdaptiveAvgPool2d))
                or super().is_leaf_module(m, qualname))


def trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.GraphModule(model, Tracer().trace(model))
    except Exception as e:  # fx raises many types
        raise QdgError(f"cannot trace the model with torch.fx: {str(e).splitlines()[0]}") from None


def is_relu(n: torch.fx.Node, mods) -> bool:
    return ((n.op == "call_module" and isinstance(mods.get(n.target), nn.ReLU))
            or (n.op == "call_function" and n.target in (F.relu, torch.relu))
            or (n.op == "call_method" and n.target in ("relu", "relu_")))


def user_quant(u: torch.fx.Node, mods):
    """The activation quantizer fx node u applies to its input (a quantized layer's, or a standalone residual
    quantizer), or None; transform (DAQ) and per-channel quantizers do not count."""
    m = mods.get(u.target) if u.op == "call_module" else None
    aq = m if isinstance(m, Quantizer) else getattr(m, "act_quant", None) if isinstance(m, (QConv2d, QLinear)) else None
    if aq is None or getattr(aq, "transform", None) or aq.scale().numel() != 1:
        return None
    return aq


def pool_quant(n: torch.fx.Node, mods):
    """For a MaxPool whose every reader quantizes its output with one and the same quantizer: that quantizer."""
    if n.op != "call_module" or not isinstance(mods.get(n.target), nn.MaxPool2d) or not n.users:
        return None
    return _one_quant(n.users, mods, pools=False)


def _one_quant(users, mods, pools: bool = True):
    qs = [(pool_quant(u, mods) if pools else None) or user_quant(u, mods) for u in users]
    if not qs or any(q is None for q in qs) or len({id(q) for q in qs}) != 1:
        return None
    return qs[0]


def output_quantizer(n: torch.fx.Node, mods):
    """The quantizer that alone reads node n's output (through a droppable ReLU and a MaxPool), or None."""
    users = list(n.users)
    relu = len(users) == 1 and is_relu(users[0], mods)
    if relu:
        users = list(users[0].users)
    q = _one_quant(users, mods)
    if q is None or (relu and (q.spec.signed or q.learned_zp)):  # ORT drops a ReLU only before zero point 0
        return None
    return q


def attach_fusion(model: nn.Module) -> int:
    """Give every layer and residual Add that ORT will run as an integer kernel its output quantizer
    (`fused_out` / `add_fused`, plain attributes). Returns how many were found."""
    from .convert import conv_bn_pairs

    gm = trace(model)
    mods = dict(model.named_modules())
    bn_of = conv_bn_pairs(gm, mods)
    found = 0
    for n in gm.graph.nodes:
        m = mods.get(n.target) if n.op == "call_module" else None
        if isinstance(m, (QConv2d, QLinear)) and getattr(m, "int_bias", False):
            q = output_quantizer(bn_of.get(n.name, n), mods)
            object.__setattr__(m, "fused_out", q)
            found += q is not None
        elif n.op == "call_function" and n.target in (operator.add, torch.add) and len(n.args) == 2:
            a, b = n.args
            qa, qb = (mods.get(x.target) if isinstance(x, torch.fx.Node) and x.op == "call_module" else None
                      for x in (a, b))
            if not (isinstance(qa, Quantizer) and isinstance(qb, Quantizer) and a.target.endswith(".add_quant")):
                continue
            q = output_quantizer(n, mods)
            if q is not None:
                block = mods[a.target.rsplit(".", 1)[0]]
                object.__setattr__(block, "add_fused", (qa, qb, q))
                found += 1
    return found

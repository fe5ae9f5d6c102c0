"""Which layers and residual Adds ONNX Runtime CPU turns into integer kernels, read from the model's fx graph.

ORT fuses DequantizeLinear → Conv → QuantizeLinear into QLinearConv (and DQ → Add → Q into QLinearAdd) when the op's
output goes only to one QuantizeLinear, possibly through a ReLU that the Q's zero point at the type's minimum
(unsigned, zero point 0) lets it drop, and through a MaxPool (max commutes with a monotone quantizer, so the
writer places the Q before the pool). The plan (quant/plan.py) hands each such layer and Add its output quantizer,
so that the eval forward computes what the integer kernel computes (quant/kernels.py) and the exporter writes the
graph ORT fuses.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from .layers import QConv2d, QLinear
from .pool import QAvgPool
from .quantizers import Quantizer
from .tracing import is_relu


def user_quant(u: torch.fx.Node, mods) -> Quantizer | None:
    """The activation quantizer fx node u applies to its input (a quantized layer's or pool's, or a standalone
    residual quantizer), or None; transform (DAQ) and per-channel quantizers do not count."""
    from .activations import INPUT_QUANT_ACTS  # activations with an input quantizer (scheme ort, quant/mobile.py)

    m = mods.get(u.target) if u.op == "call_module" else None
    aq = (
        m
        if isinstance(m, Quantizer)
        else m.act_quant
        if isinstance(m, (QConv2d, QLinear, QAvgPool, *INPUT_QUANT_ACTS))
        else None
    )
    if aq is None or aq.transform or aq.scale().numel() != 1:
        return None
    return aq


def pool_quant(n: torch.fx.Node, mods) -> Quantizer | None:
    """For a MaxPool whose every reader quantizes its output with one and the same quantizer: that quantizer."""
    if n.op != "call_module" or not isinstance(mods.get(n.target), nn.MaxPool2d) or not n.users:
        return None
    return _one_quant(n.users, mods, pools=False)


def flatten_quant(n: torch.fx.Node, mods) -> Quantizer | None:
    """For a node read only by a flatten that only quantizers read (a global pool before the classifier): the one
    quantizer they apply (flatten commutes with a per-tensor quantizer), or None."""
    users = list(n.users)
    if len(users) != 1 or not _is_flatten(users[0], mods) or not users[0].users:
        return None
    return _one_quant(users[0].users, mods, pools=False)


def _is_flatten(u: torch.fx.Node, mods) -> bool:
    return (
        (u.op == "call_module" and isinstance(mods.get(u.target), nn.Flatten))
        or (u.op == "call_function" and u.target is torch.flatten)
        or (u.op == "call_method" and u.target == "flatten")
    )


def _one_quant(users, mods, pools: bool = True) -> Quantizer | None:
    qs = [(pool_quant(u, mods) if pools else None) or user_quant(u, mods) for u in users]
    if not qs or any(q is None for q in qs) or len({id(q) for q in qs}) != 1:
        return None
    return qs[0]


def output_quantizer(n: torch.fx.Node, mods) -> Quantizer | None:
    """The quantizer that alone reads node n's output (through a droppable ReLU and a MaxPool), or None."""
    from .activations import QReLU

    users = list(n.users)
    if len(users) == 1 and users[0].op == "call_module" and isinstance(mods.get(users[0].target), QReLU):
        q = mods[users[0].target].act_quant  # a ReLU with its output quantizer (quant/mobile.py)
        return q if not (q.spec.signed or q.learned_zp or q.transform) else None
    relu = len(users) == 1 and is_relu(users[0], mods)
    if relu:
        users = list(users[0].users)
    q = _one_quant(users, mods)
    if q is None or (relu and (q.spec.signed or q.learned_zp)):  # ORT drops a ReLU only before zero point 0
        return None
    return q

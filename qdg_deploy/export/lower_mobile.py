"""Lowering: the ops of mobile CNNs (quant/mobile.py): ReLU6, Hardswish, Hardsigmoid, SiLU, Sigmoid, the
squeeze-and-excitation multiply, channel concatenation, dropout and stochastic depth (identities in eval).

An eval-matched activation (a quantized model's, quant/mobile.py) is written as the very ops its eval forward
computes, so ONNX Runtime's float32 results equal torch's bit for bit; a float model's (or a function call's,
which the model computes with torch's own kernel) as the ONNX op, which is faster but rounds differently in the
last bits. An activation with an input quantizer (scheme `ort`) reads its input through that quantizer's Q/DQ;
a ReLU with an output quantizer writes the Q/DQ after it.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from onnx import TensorProto
from torch import nn

from ..errors import QdgError
from ..quant import activations
from .graph_builder import GraphBuilder
from .lower_norm import reduce_axes
from .lower_qdq import act_qdq_shared

try:  # torchvision's stochastic depth: traced as a function call (an identity in eval)
    from torchvision.ops import stochastic_depth
except ImportError:  # pragma: no cover - torchvision is a dependency
    stochastic_depth = None

_ACTS = (nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU)
MODULES = (*_ACTS, nn.Dropout2d, nn.AlphaDropout)
FUNCTIONS = {
    operator.mul: "mul",
    torch.mul: "torch.mul",
    torch.cat: "torch.cat",
    F.relu6: "relu6",
    F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid",
    F.silu: "silu",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.dropout: "dropout",
    F.adaptive_avg_pool2d: "adaptive_avg_pool2d",
}
if stochastic_depth is not None:
    FUNCTIONS[stochastic_depth] = "stochastic_depth"
METHODS = ("mean", "sigmoid", "mul")


def _f32(g: GraphBuilder, p: str, v: float) -> str:
    return g.const(g.uid(p), np.float32(v))


def _sigmoid64(g: GraphBuilder, xd: str, p: str) -> str:
    """1 / (1 + exp(-x)) in float64, as quant/activations.py computes it."""
    one = g.const(g.uid(f"{p}.one"), np.float64(1.0))
    e = g.add("Exp", [g.add("Neg", [xd], g.uid(f"{p}.neg"))], g.uid(f"{p}.exp"))
    return g.add("Div", [one, g.add("Add", [e, one], g.uid(f"{p}.denom"))], g.uid(f"{p}.sigmoid64"))


def activation(g: GraphBuilder, x: str, p: str, kind: str, exact: bool) -> str:
    """kind: relu6, hardswish, hardsigmoid, sigmoid or silu; exact: the eval-matched ops, else the ONNX op."""
    if kind == "relu6":
        return g.add("Clip", [x, _f32(g, p, 0.0), _f32(g, p, 6.0)], g.uid(p))
    if kind in ("hardswish", "hardsigmoid"):
        if not exact and (kind == "hardsigmoid" or g.settings.opset >= 14):
            return (
                g.add("HardSwish", [x], g.uid(p))
                if kind == "hardswish"
                else g.add("HardSigmoid", [x], g.uid(p), alpha=1.0 / 6, beta=0.5)
            )
        c = g.add(
            "Clip",
            [g.add("Add", [x, _f32(g, p, 3.0)], g.uid(f"{p}.add3")), _f32(g, p, 0.0), _f32(g, p, 6.0)],
            g.uid(f"{p}.clip"),
        )
        if kind == "hardswish":
            c = g.add("Mul", [x, c], g.uid(f"{p}.mul"))
        return g.add("Div", [c, _f32(g, p, 6.0)], g.uid(p))
    if not exact:
        s = g.add("Sigmoid", [x], g.uid(f"{p}.sigmoid"))
        return s if kind == "sigmoid" else g.add("Mul", [x, s], g.uid(p))
    xd = g.add("Cast", [x], g.uid(f"{p}.to_double"), to=TensorProto.DOUBLE)
    s = _sigmoid64(g, xd, p)
    if kind == "silu":
        s = g.add("Mul", [xd, s], g.uid(f"{p}.silu64"))
    return g.add("Cast", [s], g.uid(p), to=TensorProto.FLOAT)


_KIND = (
    (nn.ReLU6, "relu6"),
    (nn.Hardswish, "hardswish"),
    (nn.Hardsigmoid, "hardsigmoid"),
    (nn.Sigmoid, "sigmoid"),
    (nn.SiLU, "silu"),
)
_EXACT = (
    activations.ExactHardswish,
    activations.ExactHardsigmoid,
    activations.ExactSigmoid,
    activations.ExactSiLU,
    nn.ReLU6,
)


def module(g: GraphBuilder, m: nn.Module, x: str, p: str) -> str | None:
    """The output of a mobile-CNN module, or None for a module this file does not lower."""
    fp32 = g.settings.fp32
    if isinstance(m, activations.QReLU):
        y = g.add("Relu", [x], g.uid(p))
        return y if fp32 else act_qdq_shared(g, y, p, m.act_quant)[0]
    if isinstance(m, (nn.Dropout2d, nn.AlphaDropout)):
        return x
    for cls, kind in _KIND:
        if isinstance(m, cls):
            if isinstance(m, activations.INPUT_QUANT_ACTS) and not fp32:
                x = act_qdq_shared(g, x, p, m.act_quant)[0]
            # a lean graph (--graph lean) writes the ONNX ops: faster (no float64 Exp), not bit-exact
            return activation(g, x, p, kind, exact=isinstance(m, _EXACT) and not fp32 and g.settings.exact)
    return None


def _dims(a) -> tuple:
    return tuple(a) if isinstance(a, (tuple, list)) else (a,)


def function(g: GraphBuilder, n: torch.fx.Node) -> str | None:
    """The output of a mobile-CNN function call, or None for a function this file does not lower."""
    f = n.target
    if f not in FUNCTIONS:
        return None
    kw = dict(n.kwargs)
    if f in (operator.mul, torch.mul):
        return _mul(g, n, n.args[0], n.args[1])
    if f is torch.cat:
        tensors = n.args[0]
        dim = n.args[1] if len(n.args) > 1 else kw.get("dim", 0)
        if dim not in (1, -3):
            raise QdgError(f"cannot export torch.cat over dim {dim} (fx node {n.name}): only channels (dim 1)")
        return g.add("Concat", [g.arg(t) for t in tensors], g.uid(n.name), axis=1)
    if f in (F.dropout,) or f is stochastic_depth:
        return g.arg(n.args[0])  # identities in eval mode (the export traces eval mode)
    if f is F.adaptive_avg_pool2d:
        size = n.args[1] if len(n.args) > 1 else kw.get("output_size")
        if size not in (1, (1, 1), [1, 1]):
            raise QdgError(f"cannot export adaptive_avg_pool2d to {size} (fx node {n.name}): only global pooling")
        return g.add("GlobalAveragePool", [g.arg(n.args[0])], g.uid(n.name))
    kind = {
        F.relu6: "relu6",
        F.hardswish: "hardswish",
        F.hardsigmoid: "hardsigmoid",
        F.silu: "silu",
        torch.sigmoid: "sigmoid",
        F.sigmoid: "sigmoid",
    }[f]
    return activation(g, g.arg(n.args[0]), n.name, kind, exact=False)


def _mul(g: GraphBuilder, n: torch.fx.Node, a, b) -> str:
    """a · b of two tensors (the squeeze-and-excitation gate), or of a tensor and a number."""
    ins = [g.arg(v) if isinstance(v, torch.fx.Node) else _f32(g, n.name, float(v)) for v in (a, b)]
    return g.add("Mul", ins, g.uid(n.name))


def method(g: GraphBuilder, n: torch.fx.Node) -> str | None:
    """The output of a mobile-CNN tensor method, or None for a method this file does not lower."""
    if (
        n.target == "flatten"
        and not n.args[1:]
        and n.kwargs.get("start_dim") == 1
        and n.kwargs.get("end_dim", -1) == -1
    ):
        return g.add("Flatten", [g.arg(n.args[0])], g.uid(n.name), axis=1)  # x.flatten(start_dim=1) (RegNet)
    if n.target == "sigmoid":
        return activation(g, g.arg(n.args[0]), n.name, "sigmoid", exact=False)
    if n.target == "mul" and len(n.args) == 2:
        return _mul(g, n, n.args[0], n.args[1])
    if n.target == "mean":
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        keep = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
        if dims is None or sorted(d % 4 for d in _dims(dims)) != [2, 3]:
            raise QdgError(f"cannot export .mean over {dims} (fx node {n.name}): only the spatial mean (2, 3)")
        axes = reduce_axes(g, n.name)
        return g.add(
            "ReduceMean", [g.arg(n.args[0]), *axes["inputs"]], g.uid(n.name), keepdims=int(bool(keep)), **axes["attrs"]
        )
    return None

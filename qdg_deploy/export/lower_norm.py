"""Lowering: BatchNorm (where no conv folds it) and GroupNorm as the quantized model computes it in eval mode."""

from __future__ import annotations

import numpy as np
import torch.fx
from onnx import TensorProto
from torch import nn

from .graph_builder import GraphBuilder


def reduce_axes(g: GraphBuilder, p: str) -> dict:
    """ReduceMean over axes 2, 3: an input from opset 18, an attribute before."""
    if g.settings.opset >= 18:
        return {"inputs": [g.const(f"{p}.axes", np.array([2, 3], np.int64))], "attrs": {}}
    return {"inputs": [], "attrs": {"axes": [2, 3]}}


def batch_norm(g: GraphBuilder, x: str, p: str, m: nn.BatchNorm2d) -> str | None:
    if not m.num_features:
        return None
    return g.add(
        "BatchNormalization",
        [
            x,
            g.const(f"{p}.weight", m.weight.detach().numpy()),
            g.const(f"{p}.bias", m.bias.detach().numpy()),
            g.const(f"{p}.mean", m.running_mean.numpy()),
            g.const(f"{p}.var", m.running_var.numpy()),
        ],
        g.uid(p),
        epsilon=float(m.eps),
    )


def group_norm(g: GraphBuilder, n: torch.fx.Node, m: nn.GroupNorm, float64: bool = True) -> str:
    """GroupNorm as a quantized model computes it in eval mode (quant.norms.ExportMatchedGroupNorm): moments
    and rstd in float64, then per channel y = x * (rstd * gamma) + (beta - mean * rstd * gamma) in float32.
    float64=False (a lean graph): the same ops all in float32, as any exporter writes them (not bit-exact)."""
    x, p = g.arg(n.args[0]), n.target
    grp, c = m.num_groups, m.num_channels
    xr = g.add("Reshape", [x, g.const(f"{p}.groups_shape", np.array([0, grp, c // grp, -1], np.int64))], f"{p}.reshape")
    mean, var = _moments(g, xr, p, float64)
    # 1/sqrt(var + eps) in float64 too: ORT's float Sqrt is not correctly rounded (a fast approximation),
    # its double one is; one cast to float32 at the end then gives the same value in both runtimes
    ft = np.float64 if float64 else np.float32
    std = g.add("Sqrt", [g.add("Add", [var, g.const(f"{p}.eps", ft(m.eps))], f"{p}.var_eps")], f"{p}.std")
    rstd = g.add("Div", [g.const(f"{p}.one", ft(1.0)), std], f"{p}.rstd_double" if float64 else f"{p}.rstd")
    if float64:
        rstd = g.add("Cast", [rstd], f"{p}.rstd", to=TensorProto.FLOAT)
        mean = g.add("Cast", [mean], f"{p}.mean_f32", to=TensorProto.FLOAT)
    gamma = m.weight.detach().numpy() if m.affine else np.ones(c, np.float32)
    beta = m.bias.detach().numpy() if m.affine else np.zeros(c, np.float32)
    scale = g.add("Mul", [rstd, g.const(f"{p}.weight", gamma.reshape(grp, c // grp, 1))], f"{p}.scale")
    shift = g.add(
        "Sub",
        [g.const(f"{p}.bias", beta.reshape(grp, c // grp, 1)), g.add("Mul", [mean, scale], f"{p}.mean_scale")],
        f"{p}.shift",
    )
    y = g.add("Add", [g.add("Mul", [xr, scale], f"{p}.mul"), shift], f"{p}.add")
    return g.add("Reshape", [y, g.add("Shape", [x], f"{p}.shape")], f"{p}.unshape")


def _moments(g: GraphBuilder, xr: str, p: str, float64: bool) -> tuple[str, str]:
    """Per-group mean and variance; in float64 both runtimes then round them to the same float32 values."""
    axes = reduce_axes(g, p)
    xd = g.add("Cast", [xr], f"{p}.to_double", to=TensorProto.DOUBLE) if float64 else xr
    mean = g.add("ReduceMean", [xd, *axes["inputs"]], f"{p}.mean", keepdims=1, **axes["attrs"])
    d = g.add("Sub", [xd, mean], f"{p}.centered")
    var = g.add(
        "ReduceMean", [g.add("Mul", [d, d], f"{p}.sq"), *axes["inputs"]], f"{p}.var", keepdims=1, **axes["attrs"]
    )
    return mean, var

"""Lowering: MaxPool (with the Q of the quantizer that reads it placed before it, where ORT fuses that) and global
average pooling (in float64, as quant.norms.ExportMatchedAvgPool computes it)."""

from __future__ import annotations

from onnx import TensorProto
from torch import nn

from .graph_builder import GraphBuilder
from .lower_norm import reduce_axes
from .lower_qdq import act_qdq


def pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def max_pool(g: GraphBuilder, x: str, p: str, m: nn.MaxPool2d, pre_quant) -> str:
    """`pre_quant`: the one quantizer every reader applies to the pool's output (max commutes with it), or None."""
    if pre_quant is not None:
        x, _ = act_qdq(g, x, f"{p}.pre", pre_quant, probe=False)
    k, s, pd, d = (pair(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.padding, m.dilation))
    return g.add(
        "MaxPool", [x], g.uid(p), kernel_shape=k, strides=s, pads=pd + pd, dilations=d, ceil_mode=int(m.ceil_mode)
    )


def global_avg_pool(g: GraphBuilder, x: str, p: str, float64: bool, post_quant=None) -> str:
    """GlobalAveragePool, or (float64) the mean in float64 and one cast to float32; `post_quant`: the quantizer
    that reads the pooled tensor, written right after the pool (ORT's QLinearGlobalAveragePool)."""
    if not float64:
        y = g.add("GlobalAveragePool", [x], g.uid(p))
        return y if post_quant is None else act_qdq(g, y, f"{p}.post", post_quant, probe=False)[0]
    axes = reduce_axes(g, p)
    xd = g.add("Cast", [x], f"{p}.to_double", to=TensorProto.DOUBLE)
    mean = g.add("ReduceMean", [xd, *axes["inputs"]], f"{p}.mean", keepdims=1, **axes["attrs"])
    return g.add("Cast", [mean], f"{p}.to_float", to=TensorProto.FLOAT)

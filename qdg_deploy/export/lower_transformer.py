"""Lowering: the tensor plumbing of timm's ViT / DeiT and ConvNeXt, and their float ops.

Shapes: the fx graph reads shapes (`x.shape`, `B, N, C = x.shape`) and passes them to reshape / expand. Those
python-level values are kept here (`Context.py`), never written as ONNX tensors, except where the batch size is
needed at run time (the class token's `expand`). Every reshape is written with the static shape torch.fx's
ShapeProp measured, the batch-sized dimension as -1: the graph is propagated at two batch sizes and the dimensions
that differ are the batch's.

Ops: LayerNorm (LayerNormalization, opset ≥ 17), GELU (erf or tanh form, from Erf / Tanh), Softmax, MatMul, the
quantized attention matmul (quant/transformer.py's QMatMul: Q/DQ on both operands, MatMul, snapped to its integer
accumulator on the exact graph), transpose / permute / unbind, token slicing, concatenation (class token), means,
layer scale (Mul by a constant), dropout / drop-path (identity in eval). Linear layers on tokens ([B, N, C]) are
written as Reshape → Gemm → Reshape (Gemm is 2-D; ORT fuses DQ → Gemm into QGemm).
"""

from __future__ import annotations

import math
import operator
from typing import cast

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from onnx import TensorProto
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import QdgError
from ..quant.transformer import ERF_A, ERF_P, ExactGELU, ExactLayerNorm, QMatMul
from .graph_builder import GraphBuilder
from .lower_qdq import act_qdq

_NONE = ""  # g.names value of an fx node that is no tensor (a shape, an assert): its value is in Context.py
_IDENTITY_FUNCS = {F.dropout, torch.nn.functional.dropout}
_SHAPE_METHODS = ("reshape", "view", "flatten", "squeeze", "unsqueeze")


def _timm_funcs() -> dict:
    try:
        from timm.layers import attention as ta
    except ImportError:
        return {}
    return {getattr(ta, k): k for k in ("resolve_self_attn_mask", "maybe_add_mask") if hasattr(ta, k)}


def extra_functions() -> set:
    """Functions the lowering knows beyond export/supported.py's FUNCTIONS (timm's mask helpers, fx's asserts)."""
    import torch.fx._symbolic_trace as st

    return set(_timm_funcs()) | {f for f in (getattr(st, "_assert_is_none", None),) if f is not None}


class Context:
    """Per-export state: python values of non-tensor nodes, constants, shapes at two batch sizes."""

    def __init__(self, model: nn.Module, gm: torch.fx.GraphModule, input_shape):
        self.model, self.gm, self.input_shape = model, gm, list(input_shape)
        self.py: dict[str, object] = {}
        self.consts: dict[str, torch.Tensor] = {}
        self.attr_inits: set[str] = set()
        self._shapes: tuple[dict, dict] | None = None

    def shapes(self) -> tuple[dict, dict]:
        if self._shapes is None:
            out = []
            for b in (2, 3):
                ShapeProp(self.gm).propagate(torch.zeros(b, *self.input_shape))
                out.append(
                    {
                        n.name: list(n.meta["tensor_meta"].shape)
                        for n in self.gm.graph.nodes
                        if isinstance(n.meta.get("tensor_meta"), torch.fx.passes.shape_prop.TensorMetadata)
                    }
                )
            self._shapes = (out[0], out[1])
        return self._shapes

    def shape(self, n: torch.fx.Node) -> list[int]:
        """The node's shape, -1 at the batch-sized dimension (at most one)."""
        a, b = self.shapes()
        if n.name not in a:
            raise QdgError(f"cannot export fx node {n.name}: no tensor shape recorded")
        dims = [-1 if x != y else x for x, y in zip(a[n.name], b[n.name])]
        if dims.count(-1) > 1:
            raise QdgError(f"cannot export fx node {n.name}: more than one dimension follows the batch size")
        return dims

    def rank(self, n: torch.fx.Node) -> int:
        return len(self.shapes()[0][n.name])


def ctx_of(low) -> Context:
    if getattr(low, "tx", None) is None:
        low.tx = Context(low.model, low.gm, low.input_shape)
    return low.tx


def _const(g: GraphBuilder, ctx: Context, n: torch.fx.Node, value: torch.Tensor) -> str:
    """A folded constant, as an initializer named after its node (pruned at the end if nothing reads it)."""
    ctx.consts[n.name] = value.detach()
    name = cast(str, n.target) if n.op == "get_attr" else f"{n.name}.const"  # a get_attr target is a str
    arr = value.detach().cpu().numpy()
    g.const(name, arr.astype(np.float32) if arr.dtype == np.float64 else arr)
    ctx.attr_inits.add(name)
    return name


def get_attr(low, n: torch.fx.Node) -> str:
    ctx = ctx_of(low)
    return _const(low.g, ctx, n, torch.as_tensor(_attr(low.model, n.target)))


def _attr(model, target: str):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def finish(low) -> None:
    """Drop folded constants nothing reads (a layer-scale parameter once its reshaped copy is written)."""
    ctx = getattr(low, "tx", None)
    if ctx is None:
        return
    used = {t for node in low.g.nodes for t in node.input}
    low.g.inits[:] = [t for t in low.g.inits if t.name not in ctx.attr_inits or t.name in used]


def _val(low, a):
    """An fx argument's python value: constants and non-tensor nodes resolved, tensors as fx nodes."""
    if isinstance(a, torch.fx.Node):
        ctx = ctx_of(low)
        if a.name in ctx.consts:
            return ctx.consts[a.name]
        if a.name in ctx.py:
            return ctx.py[a.name]
        return a
    if isinstance(a, (list, tuple)):
        return type(a)(_val(low, x) for x in a)
    return a


def _nodes(args) -> list[torch.fx.Node]:
    out: list[torch.fx.Node] = []
    torch.fx.node.map_arg(args, out.append)
    return out


def _all_const(low, n: torch.fx.Node) -> bool:
    ctx = ctx_of(low)
    ins = _nodes((n.args, n.kwargs))
    return bool(ins) and all(i.name in ctx.consts for i in ins)


def _fold(low, n: torch.fx.Node) -> str:
    """A node that reads constants only (layer scale's gamma.reshape(1, -1, 1, 1)): computed now."""
    args, kwargs = _val(low, n.args), _val(low, n.kwargs)
    value = getattr(args[0], n.target)(*args[1:], **kwargs) if n.op == "call_method" else n.target(*args, **kwargs)
    return _const(low.g, ctx_of(low), n, value)


def _py(low, n: torch.fx.Node, value) -> str:
    ctx_of(low).py[n.name] = value
    return _NONE


def _i64(g: GraphBuilder, name: str, values) -> str:
    return g.const(g.uid(name), np.asarray(values, np.int64))


def _reshape_to(g: GraphBuilder, x: str, dims: list[int], p: str) -> str:
    return g.add("Reshape", [x, _i64(g, f"{p}.shape", dims)], g.uid(p))


def _f32(g: GraphBuilder, p: str, v: float) -> str:
    return g.const(g.uid(p), np.float32(v))


def _is_float_scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def function(low, n: torch.fx.Node):
    """ONNX tensor (or _NONE) for a call_function node this module lowers; NotImplemented otherwise."""
    g, f = low.g, n.target
    if _all_const(low, n) and f not in (getattr,):
        return _fold(low, n)
    if f is getattr and n.args[1] == "shape":
        return _py(low, n, ("shape", n.args[0]))
    if f in (operator.eq, torch._assert) or getattr(f, "__name__", "") in ("_assert", "_assert_is_none"):
        return _py(low, n, None)
    if f is operator.getitem:
        return _getitem(low, n)
    if f in _IDENTITY_FUNCS:
        return g.arg(n.args[0])
    timm_f = _timm_funcs().get(f)
    if timm_f == "resolve_self_attn_mask":
        if n.args[2] is not None or n.args[3]:
            raise QdgError(f"cannot export an attention mask (fx node {n.name})")
        return _py(low, n, None)
    if timm_f == "maybe_add_mask":
        if _val(low, n.args[1]) is not None:
            raise QdgError(f"cannot export an attention mask (fx node {n.name})")
        return g.arg(n.args[0])
    if f is torch.cat:
        tensors = n.args[0] if n.args else n.kwargs["tensors"]
        dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
        return g.add("Concat", [g.arg(t) for t in tensors], g.uid(n.name), axis=int(dim))
    if f in (operator.mul, torch.mul, operator.truediv, torch.div):
        return _binary(low, n, "Mul" if f in (operator.mul, torch.mul) else "Div")
    if f in (operator.matmul, torch.matmul, torch.bmm):
        return g.add("MatMul", [g.arg(n.args[0]), g.arg(n.args[1])], g.uid(n.name))
    if f is F.layer_norm:
        return layer_norm(low, n)
    if f is F.gelu:
        return gelu(g, g.arg(n.args[0]), n.name, n.kwargs.get("approximate", "none"))
    if f is F.softmax:
        return g.add("Softmax", [g.arg(n.args[0])], g.uid(n.name), axis=int(n.kwargs.get("dim", n.args[1])))
    if f is F.scaled_dot_product_attention:
        return _sdpa(low, n)
    return NotImplemented


def method(low, n: torch.fx.Node):
    """ONNX tensor (or _NONE) for a call_method node this module lowers; NotImplemented otherwise."""
    g, m = low.g, n.target
    if _all_const(low, n):
        return _fold(low, n)
    x = n.args[0]
    if m in _SHAPE_METHODS:
        return _reshape_to(g, g.arg(x), ctx_of(low).shape(n), n.name)
    if m in ("transpose", "permute"):
        r = ctx_of(low).rank(x)
        if m == "transpose":
            a, b = (int(d) % r for d in n.args[1:3])
            perm = list(range(r))
            perm[a], perm[b] = perm[b], perm[a]
        else:
            dims = n.args[1] if len(n.args) == 2 and isinstance(n.args[1], (list, tuple)) else n.args[1:]
            perm = [int(d) % r for d in dims]
        return g.add("Transpose", [g.arg(x)], g.uid(n.name), perm=perm)
    if m == "contiguous":
        return g.arg(x)
    if m in ("double", "float"):  # the float64 softmax of quantized attention (quant/transformer.py)
        return g.add("Cast", [g.arg(x)], g.uid(n.name), to=TensorProto.DOUBLE if m == "double" else TensorProto.FLOAT)
    if m == "unbind":
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        return _py(low, n, ("unbind", g.arg(x), int(dim) % ctx_of(low).rank(x)))
    if m == "expand":
        return _expand(low, n)
    if m == "softmax":
        dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
        return g.add("Softmax", [g.arg(x)], g.uid(n.name), axis=int(dim))
    if m == "mean":
        return _mean(low, n)
    if m in ("mul", "mul_", "div", "div_"):
        return _binary(low, n, "Mul" if m.startswith("mul") else "Div")
    return NotImplemented


def _binary(low, n: torch.fx.Node, op: str) -> str:
    g = low.g
    a, b = n.args[0], n.args[1]
    ins = [
        g.arg(v) if isinstance(v, torch.fx.Node) else _f32(g, f"{n.name}.c", v) if _is_float_scalar(v) else None
        for v in (a, b)
    ]
    if None in ins:
        raise QdgError(f"cannot export {op} of {a!r} and {b!r} (fx node {n.name})")
    return g.add(op, ins, g.uid(n.name))


def _getitem(low, n: torch.fx.Node):
    g, src, idx = low.g, n.args[0], n.args[1]
    v = _val(low, src)
    if isinstance(v, tuple) and v and v[0] == "shape":
        return _py(low, n, ("dim", v[1], int(idx)))
    if isinstance(v, tuple) and v and v[0] == "unbind":
        _, x, dim = v
        return g.add("Gather", [x, g.const(g.uid(f"{n.name}.index"), np.int64(idx))], g.uid(n.name), axis=dim)
    if not isinstance(v, torch.fx.Node):
        raise QdgError(f"cannot export indexing of {v!r} (fx node {n.name})")
    y, axis = g.arg(src), 0
    for item in idx if isinstance(idx, tuple) else (idx,):
        if isinstance(item, slice):
            if item != slice(None):
                if item.step not in (None, 1):
                    raise QdgError(f"cannot export a strided slice (fx node {n.name})")
                lo = item.start or 0
                hi = item.stop if item.stop is not None else np.iinfo(np.int64).max
                y = g.add(
                    "Slice",
                    [
                        y,
                        _i64(g, f"{n.name}.starts", [lo]),
                        _i64(g, f"{n.name}.ends", [hi]),
                        _i64(g, f"{n.name}.axes", [axis]),
                    ],
                    g.uid(n.name),
                )
            axis += 1
        elif isinstance(item, int):
            y = g.add("Gather", [y, g.const(g.uid(f"{n.name}.index"), np.int64(item))], g.uid(n.name), axis=axis)
        else:
            raise QdgError(f"cannot export index {item!r} (fx node {n.name})")
    return y


def _expand(low, n: torch.fx.Node) -> str:
    """x.expand(B, -1, -1) (the class token): the batch size read from the tensor it came from at run time."""
    g, ctx = low.g, ctx_of(low)
    sizes = n.args[1] if len(n.args) == 2 and isinstance(n.args[1], (list, tuple)) else n.args[1:]
    static = ctx.shapes()[0][n.name]
    parts = []
    for j, s in enumerate(sizes):
        v = _val(low, s)
        if isinstance(v, tuple) and v[0] == "dim":
            shape = g.add("Shape", [g.arg(v[1])], g.uid(f"{n.name}.shape"))
            parts.append(g.add("Gather", [shape, _i64(g, f"{n.name}.dim", [v[2]])], g.uid(f"{n.name}.dim")))
        elif isinstance(v, int):
            parts.append(_i64(g, f"{n.name}.size", [static[j] if v == -1 else v]))
        else:
            raise QdgError(f"cannot export expand to {v!r} (fx node {n.name})")
    shape = g.add("Concat", parts, g.uid(f"{n.name}.sizes"), axis=0)
    return g.add("Expand", [g.arg(n.args[0]), shape], g.uid(n.name))


def _mean(low, n: torch.fx.Node) -> str:
    g = low.g
    dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
    keep = int(bool(n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False)))
    if dim is None:
        raise QdgError(f"cannot export a mean over every dimension (fx node {n.name})")
    axes = [int(d) for d in (dim if isinstance(dim, (list, tuple)) else [dim])]
    if g.settings.opset >= 18:
        return g.add("ReduceMean", [g.arg(n.args[0]), _i64(g, f"{n.name}.axes", axes)], g.uid(n.name), keepdims=keep)
    return g.add("ReduceMean", [g.arg(n.args[0])], g.uid(n.name), axes=axes, keepdims=keep)


def layer_norm(low, n: torch.fx.Node) -> str:
    g = low.g
    if g.settings.opset < 17:
        raise QdgError(f"LayerNorm needs --opset 17 or newer (LayerNormalization); got {g.settings.opset}")
    shape = n.args[1] if len(n.args) > 1 else n.kwargs["normalized_shape"]
    weight = n.kwargs.get("weight", n.args[2] if len(n.args) > 2 else None)
    bias = n.kwargs.get("bias", n.args[3] if len(n.args) > 3 else None)
    eps = n.kwargs.get("eps", n.args[4] if len(n.args) > 4 else 1e-5)
    w = g.arg(weight) if weight is not None else g.const(g.uid(f"{n.name}.ones"), np.ones(shape, np.float32))
    ins = [g.arg(n.args[0]), w] + ([g.arg(bias)] if bias is not None else [])
    return g.add("LayerNormalization", ins, g.uid(n.name), axis=-len(shape), epsilon=float(eps))


def layer_norm_module(g: GraphBuilder, x: str, p: str, m: nn.LayerNorm) -> str:
    if g.settings.opset < 17:
        raise QdgError(f"LayerNorm needs --opset 17 or newer (LayerNormalization); got {g.settings.opset}")
    shape = list(m.normalized_shape)
    w = m.weight.detach().numpy() if m.weight is not None else np.ones(shape, np.float32)
    ins = [x, g.const(f"{p}.weight", w)] + (
        [g.const(f"{p}.bias", m.bias.detach().numpy())] if m.bias is not None else []
    )
    return g.add("LayerNormalization", ins, g.uid(p), axis=-len(shape), epsilon=float(m.eps))


def gelu(g: GraphBuilder, x: str, p: str, approximate: str = "none") -> str:
    """GELU from opset-13 ops: 0.5·x·(1 + erf(x/√2)), or the tanh form 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))."""
    if approximate == "tanh":
        cube = g.add("Mul", [g.add("Mul", [x, x], g.uid(f"{p}.sq")), x], g.uid(f"{p}.cube"))
        inner = g.add("Add", [x, g.add("Mul", [cube, _f32(g, f"{p}.k", 0.044715)], g.uid(f"{p}.kc"))], g.uid(p))
        t = g.add("Tanh", [g.add("Mul", [inner, _f32(g, f"{p}.c", math.sqrt(2 / math.pi))], g.uid(p))], g.uid(p))
    elif approximate == "none":
        t = g.add("Erf", [g.add("Mul", [x, _f32(g, f"{p}.rsqrt2", 1 / math.sqrt(2))], g.uid(p))], g.uid(f"{p}.erf"))
    else:
        raise QdgError(f"cannot export GELU with approximate={approximate!r}")
    one_plus = g.add("Add", [t, _f32(g, f"{p}.one", 1.0)], g.uid(p))
    return g.add("Mul", [g.add("Mul", [x, _f32(g, f"{p}.half", 0.5)], g.uid(p)), one_plus], g.uid(f"{p}.gelu"))


def _sdpa(low, n: torch.fx.Node) -> str:
    """Fused attention of a float model: softmax(q·kᵀ·scale)·v, no mask, no dropout in eval."""
    g, ctx = low.g, ctx_of(low)
    if n.kwargs.get("attn_mask") is not None or n.kwargs.get("is_causal") or len(n.args) > 3:
        raise QdgError(f"cannot export scaled_dot_product_attention with a mask (fx node {n.name})")
    q, k, v = (g.arg(a) for a in n.args[:3])
    d = ctx.shapes()[0][n.args[0].name][-1]
    scale = n.kwargs.get("scale") or 1 / math.sqrt(d)
    r = ctx.rank(n.args[1])
    perm = list(range(r))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    kt = g.add("Transpose", [k], g.uid(f"{n.name}.kt"), perm=perm)
    s = g.add("MatMul", [g.add("Mul", [q, _f32(g, f"{n.name}.scale", scale)], g.uid(n.name)), kt], g.uid(n.name))
    return g.add("MatMul", [g.add("Softmax", [s], g.uid(n.name), axis=-1), v], g.uid(f"{n.name}.av"))


def module(low, n: torch.fx.Node, m: nn.Module):
    """ONNX tensor for a module this file lowers (None: not one of them)."""
    g = low.g
    if isinstance(m, QMatMul):
        return qmatmul(low, n, m)
    exact = g.settings.exact and not g.settings.fp32
    if isinstance(m, ExactLayerNorm):
        x = g.arg(n.args[0])
        if m.channels_first:
            x = g.add("Transpose", [x], g.uid(f"{n.target}.to_last"), perm=[0, 2, 3, 1])
        y = layer_norm64(g, x, n.target, m) if exact else layer_norm_module(g, x, n.target, m)
        return g.add("Transpose", [y], g.uid(f"{n.target}.to_first"), perm=[0, 3, 1, 2]) if m.channels_first else y
    if isinstance(m, ExactGELU):
        return (
            gelu64(g, g.arg(n.args[0]), n.target, m.approximate)
            if exact
            else gelu(g, g.arg(n.args[0]), n.target, m.approximate)
        )
    if isinstance(m, nn.GELU):
        return gelu(g, g.arg(n.args[0]), n.target, m.approximate)
    if isinstance(m, nn.LayerNorm):
        return layer_norm_module(g, g.arg(n.args[0]), n.target, m)
    if isinstance(m, nn.Softmax):
        return g.add("Softmax", [g.arg(n.args[0])], g.uid(n.target), axis=int(m.dim if m.dim is not None else -1))
    return None


def _d(g: GraphBuilder, p: str, v) -> str:
    return g.const(g.uid(p), np.asarray(v, np.float64))


def layer_norm64(g: GraphBuilder, x: str, p: str, m: nn.LayerNorm) -> str:
    """LayerNorm as ExactLayerNorm computes it in eval mode: moments and normalisation in float64, one Cast."""
    axes = list(range(-len(m.normalized_shape), 0))
    d = g.add("Cast", [x], g.uid(f"{p}.to_double"), to=TensorProto.DOUBLE)

    def mean(t: str, tag: str) -> str:
        if g.settings.opset >= 18:
            return g.add("ReduceMean", [t, _i64(g, f"{p}.axes", axes)], g.uid(f"{p}.{tag}"), keepdims=1)
        return g.add("ReduceMean", [t], g.uid(f"{p}.{tag}"), axes=axes, keepdims=1)

    c = g.add("Sub", [d, mean(d, "mean")], g.uid(f"{p}.centered"))
    var = mean(g.add("Mul", [c, c], g.uid(f"{p}.sq")), "var")
    y = g.add(
        "Div",
        [c, g.add("Sqrt", [g.add("Add", [var, _d(g, f"{p}.eps", m.eps)], g.uid(p))], g.uid(p))],
        g.uid(f"{p}.normed"),
    )
    if m.weight is not None:
        y = g.add("Mul", [y, _d(g, f"{p}.weight", m.weight.detach().double().numpy())], g.uid(p))
    if m.bias is not None:
        y = g.add("Add", [y, _d(g, f"{p}.bias", m.bias.detach().double().numpy())], g.uid(p))
    return g.add("Cast", [y], g.uid(f"{p}.to_float"), to=TensorProto.FLOAT)


def gelu64(g: GraphBuilder, x: str, p: str, approximate: str) -> str:
    """GELU as ExactGELU computes it in eval mode: float64 (erf from quant/transformer.py's erf64), one Cast."""
    d = g.add("Cast", [x], g.uid(f"{p}.to_double"), to=TensorProto.DOUBLE)
    if approximate == "tanh":
        cube = g.add("Mul", [g.add("Mul", [_d(g, f"{p}.k", 0.044715), d], g.uid(p)), d], g.uid(p))
        inner = g.add(
            "Mul",
            [g.add("Add", [d, g.add("Mul", [cube, d], g.uid(p))], g.uid(p)), _d(g, f"{p}.c", math.sqrt(2 / math.pi))],
            g.uid(p),
        )
        t = g.add("Tanh", [inner], g.uid(p))
    else:
        z = g.add("Mul", [d, _d(g, f"{p}.rsqrt2", 1 / math.sqrt(2))], g.uid(p))
        a = g.add("Abs", [z], g.uid(p))
        tt = g.add(
            "Div",
            [
                _d(g, f"{p}.one", 1.0),
                g.add("Add", [_d(g, f"{p}.one", 1.0), g.add("Mul", [_d(g, f"{p}.p", ERF_P), a], g.uid(p))], g.uid(p)),
            ],
            g.uid(f"{p}.t"),
        )
        poly = _d(g, f"{p}.a5", ERF_A[4])
        for i, c in zip((4, 3, 2, 1), ERF_A[3::-1]):
            poly = g.add("Add", [g.add("Mul", [poly, tt], g.uid(p)), _d(g, f"{p}.a{i}", c)], g.uid(p))
        e = g.add("Exp", [g.add("Neg", [g.add("Mul", [a, a], g.uid(p))], g.uid(p))], g.uid(p))
        one_minus = g.add(
            "Sub", [_d(g, f"{p}.one", 1.0), g.add("Mul", [g.add("Mul", [poly, tt], g.uid(p)), e], g.uid(p))], g.uid(p)
        )
        t = g.add("Mul", [g.add("Sign", [z], g.uid(p)), one_minus], g.uid(f"{p}.erf"))
    y = g.add(
        "Mul",
        [g.add("Mul", [_d(g, f"{p}.half", 0.5), d], g.uid(p)), g.add("Add", [_d(g, f"{p}.one", 1.0), t], g.uid(p))],
        g.uid(p),
    )
    return g.add("Cast", [y], g.uid(f"{p}.gelu"), to=TensorProto.FLOAT)


def qmatmul(low, n: torch.fx.Node, m: QMatMul) -> str:
    """Q/DQ on both operands, MatMul; on the exact graph snapped to the accumulator grid as QMatMul's eval does."""
    g, p = low.g, n.target
    a, b = g.arg(n.args[0]), g.arg(n.args[1])
    if not g.settings.fp32:
        a, _ = act_qdq(g, a, f"{p}.a", m.a_quant, probe=False)
        b, _ = act_qdq(g, b, f"{p}.b", m.b_quant, probe=False)
    y = g.add("MatMul", [a, b], f"{p}.matmul")
    if not g.settings.fp32 and g.settings.exact:
        unit = g.const(f"{p}.acc_unit", np.float32(m.unit().item()))
        y = g.add("Div", [y, unit], f"{p}.acc")
        y = g.add("Mul", [g.add("Round", [y], f"{p}.acc_round"), unit], f"{p}.acc_scaled")
    return y


def token_linear(low, n: torch.fx.Node, lower) -> None:
    """A Linear on tokens [B, N, C]: Reshape to [B·N, C], the layer as lower_layer writes it, Reshape back."""
    g, ctx, src = low.g, ctx_of(low), n.args[0]
    x = g.arg(src)
    g.names[src.name] = _reshape_to(g, x, [-1, ctx.shape(src)[-1]], f"{n.target}.tokens")
    try:
        lower()
    finally:
        g.names[src.name] = x
    y = _reshape_to(g, g.names[n.name], ctx.shape(n), f"{n.target}.untokens")
    g.names[n.name] = y
    g.probe("node", n.target, y, fx=n.name)


def needs_tokens(low, n: torch.fx.Node, m: nn.Module) -> bool:
    """A Linear whose input is not 2-D (timm's token Linears)."""
    if not isinstance(m, nn.Linear) or not isinstance(n.args[0], torch.fx.Node) or not low.transformer:
        return False
    return ctx_of(low).rank(n.args[0]) != 2

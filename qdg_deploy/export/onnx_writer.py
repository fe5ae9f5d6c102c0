"""Our own QDQ ONNX writer: a torch.fx trace of the quantized model, lowered one fx node at a time.

torch's exporters cannot carry the LSQ quantizers (see FACTS.md), so the graph is written here with `onnx.helper`:
each fx node goes to the lowering step of its op family (export/lower_*.py: Q/DQ, conv/gemm, norm, pooling, Add,
DAQ) on one GraphBuilder, and each quantized layer, residual quantizer and quantized Add leaves a typed record
(export/records.py) from which the report is built. Targets: `tensorrt` (int8, zero point 0; residual Adds'
identity inputs quantized) and `ort` (uint8, so ONNX Runtime's U8S8 kernels run).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import onnx
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..errors import QdgError
from ..quant import Quantizer, quant_layers
from ..quant.norms import ExportMatchedAvgPool
from ..quant.ort_fusion import flatten_quant, pool_quant
from ..quant.pool import QAvgPool
from ..quant.tracing import conv_bn_pairs, trace
from ..quant.transformer import is_transformer
from . import lower_add, lower_mobile, lower_norm, lower_pool, lower_transformer
from .graph_builder import INPUT, OUTPUT, GraphBuilder, Settings
from .lower_layer import lower_layer
from .records import LayerRecord, ResidualQdqRecord, ResidualQuantRecord

TARGETS = ("tensorrt", "ort")
GRAPHS = ("exact", "lean")
DEFAULT_OPSET = 17
MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear


@dataclass
class LoweredGraph:
    """The ONNX model and what each lowering step wrote."""

    proto: onnx.ModelProto
    settings: Settings
    dynamic_batch: bool
    layers: list[LayerRecord]
    residual_quantizers: list[ResidualQuantRecord]
    residual_qdq: list[ResidualQdqRecord]
    probes: list[dict]
    weight_bits: dict[str, int]

    def info(self) -> dict:
        """the lowering's info dict (JSON-ready records, probes, code bit-widths)."""
        s = self.settings
        return {
            "target": s.target,
            "graph": s.graph,
            "opset": s.opset,
            "dynamic_batch": self.dynamic_batch,
            "fp32": s.fp32,
            "int_bias": s.int_bias,
            "layers": [r.as_json() for r in self.layers],
            "residual_qdq": [r.as_json() for r in self.residual_qdq],
            "residual_quantizers": [r.as_json() for r in self.residual_quantizers],
            "probes": self.probes,
            "weight_bits": self.weight_bits,
        }


class _Lowering:
    """The walk over the fx graph: which lowering step each node takes, and the records they return."""

    def __init__(self, model: nn.Module, gm: torch.fx.GraphModule, settings: Settings):
        self.g = GraphBuilder(settings)
        self.mods = dict(model.named_modules())
        self.bn_of = conv_bn_pairs(gm, self.mods)
        self.folded_bn = {b.name for b in self.bn_of.values()}
        self.layers: list[LayerRecord] = []
        self.residual_quant: list[ResidualQuantRecord] = []
        self.residual_qdq: list[ResidualQdqRecord] = []
        # transformers (export/lower_transformer.py): shapes and constants of the tensor plumbing, on demand
        self.model, self.gm, self.input_shape, self.tx = model, gm, None, None
        self.transformer = is_transformer(model)

    def node(self, n: torch.fx.Node):
        """Lower one fx node; returns the graph output's fx node for the `output` node, else None."""
        g = self.g
        if n.op == "placeholder":
            g.names[n.name] = INPUT
        elif n.op == "get_attr":  # a parameter read in forward (class token, position embedding, norm weights)
            g.names[n.name] = lower_transformer.get_attr(self, n)
        elif n.op == "call_module":
            if n.name not in self.folded_bn:  # a folded BatchNorm is written with its conv
                self.module(n)
        elif n.op == "call_function":
            g.names[n.name] = self.function(n)
            if g.names[n.name] and n.name not in (self.tx.consts if self.tx else ()):  # not a shape or constant
                g.probe("node", n.name, g.names[n.name], fx=n.name)
        elif n.op == "call_method":
            g.names[n.name] = self.method(n)
        elif n.op == "output":
            outputs = n.args[0] if isinstance(n.args[0], (tuple, list)) else [n.args[0]]
            if len(outputs) != 1:
                raise QdgError("only single-output models can be exported")
            return outputs[0]
        else:
            raise QdgError(f"cannot export fx node {n.op} {n.target}")
        return None

    def module(self, n: torch.fx.Node) -> None:
        m = self.mods[n.target]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            bn_node = self.bn_of.get(n.name)

            def lower():
                rec = lower_layer(self.g, n, m, bn_node, self.mods[bn_node.target] if bn_node is not None else None)
                if rec is not None:
                    self.layers.append(rec)

            if lower_transformer.needs_tokens(self, n, m):  # a Linear on [B, N, C] tokens
                lower_transformer.token_linear(self, n, lower)
            else:
                lower()
            return
        if (y := lower_transformer.module(self, n, m)) is not None:  # QMatMul, GELU, LayerNorm, Softmax
            self.g.names[n.name] = y
            self.g.probe("node", n.target, y, fx=n.name)
            return
        y, probe = self.other_module(n, m, self.g.arg(n.args[0]))
        if y is not None:
            self.g.names[n.name] = y
            if probe:  # (torch's pool output is float where the graph quantized it first: no probe)
                self.g.probe("node", n.target, y, fx=n.name)

    def other_module(self, n: torch.fx.Node, m: nn.Module, x: str) -> tuple[str | None, bool]:
        """(the module's output tensor, whether to probe it) for every module but a conv / linear layer."""
        g, p, fp32 = self.g, n.target, self.g.settings.fp32
        if (y := lower_mobile.module(g, m, x, p)) is not None:  # ReLU6, Hardswish, SiLU, ... (quant/mobile.py)
            return y, True
        if isinstance(m, nn.BatchNorm2d):
            return lower_norm.batch_norm(g, x, p, m), True
        if isinstance(m, nn.ReLU):
            return g.add("Relu", [x], g.uid(p)), True
        if isinstance(m, Quantizer):  # a residual Add's input (the block's identity or main branch)
            y, rec = lower_add.residual_quant(g, x, p, m)
            self.residual_quant += [rec] if rec is not None else []
            return y, True
        if isinstance(m, nn.MaxPool2d):
            pre = None if fp32 else pool_quant(n, self.mods)
            return lower_pool.max_pool(g, x, p, m, pre), pre is None
        if isinstance(m, QAvgPool) and not fp32:  # the last block's output, quantized before the pool
            x, rec = lower_add.residual_quant(g, x, f"{p}.act_quant", m.act_quant)
            self.residual_quant.append(rec)
        if isinstance(m, nn.AdaptiveAvgPool2d) and lower_pool.pair(m.output_size) == [1, 1]:
            # the classifier's Q right after the pool (not after Flatten), so ORT fuses DQ → pool → Q into
            # QLinearGlobalAveragePool: exact where the plan has the pool compute that kernel (quant/pool.py), else
            # (lean only) as quantize_static's graphs do, not bit-exact
            post = (
                None
                if fp32 or not isinstance(m, QAvgPool)
                else (m.pool_plan.out if ort_pool(g, m) else None if g.settings.exact else flatten_quant(n, self.mods))
            )
            float64 = isinstance(m, ExportMatchedAvgPool) and not fp32 and g.settings.exact and post is None
            return lower_pool.global_avg_pool(g, x, p, float64=float64, post_quant=post), post is None
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return g.add("Flatten", [x], g.uid(p), axis=1), True
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return x, True
        if isinstance(m, nn.GroupNorm):
            return lower_norm.group_norm(g, n, m, float64=g.settings.exact), True
        raise QdgError(f"cannot export module {p!r} of type {type(m).__name__}")

    def function(self, n: torch.fx.Node) -> str:
        f, g = n.target, self.g
        y: str | None
        if f in (operator.add, torch.add) and len(n.args) == 2 and not n.kwargs:
            y, rec = lower_add.add(g, n)
            self.residual_qdq += [rec] if rec is not None else []
            return y
        if f in (F.relu, torch.relu):
            return g.add("Relu", [g.arg(n.args[0])], g.uid(n.name))
        if f is torch.flatten and tuple(n.args[1:]) in ((1,), (1, -1)) and not n.kwargs:
            return g.add("Flatten", [g.arg(n.args[0])], g.uid(n.name), axis=1)
        if (y := lower_transformer.function(self, n)) is not NotImplemented:
            return y
        if (y := lower_mobile.function(g, n)) is not None:
            return y
        raise QdgError(f"cannot export function {getattr(f, '__name__', f)!r} (fx node {n.name})")

    def method(self, n: torch.fx.Node) -> str:
        g = self.g
        if n.target == "flatten" and tuple(n.args[1:]) in ((1,), (1, -1)):
            return g.add("Flatten", [g.arg(n.args[0])], g.uid(n.name), axis=1)
        if n.target in ("relu", "relu_"):
            return g.add("Relu", [g.arg(n.args[0])], g.uid(n.name))
        if (y := lower_transformer.method(self, n)) is not NotImplemented:
            return y
        if (y := lower_mobile.method(g, n)) is not None:
            return y
        raise QdgError(f"cannot export tensor method .{n.target}() (fx node {n.name})")


def ort_pool(g: GraphBuilder, m: QAvgPool) -> bool:
    """Whether the pool is written as the QLinearGlobalAveragePool its eval forward computes."""
    return g.settings.ort_kernels and m.pool_plan is not None


def check_ready(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, Quantizer) and not bool(m.initialized):
            raise QdgError(f"quantizer {name} was never initialized: run a calibration forward before export")


def trained_for_ort(model: nn.Module) -> bool:
    """Whether every activation quantizer is unsigned (the `ort` scheme's ReLU-foldable uint8)."""
    acts = [m.act_quant for m in quant_layers(model).values() if m.act_quant is not None]
    return bool(acts) and all(not a.spec.signed for a in acts)


def _settings(model, target, opset, fp32, residual_qdq, int_bias, graph) -> Settings:
    if graph not in GRAPHS:
        raise QdgError(f"unknown graph {graph!r}; choose one of {', '.join(GRAPHS)}")
    if target not in TARGETS:
        raise QdgError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if opset < MIN_OPSET:
        raise QdgError(f"opset {opset} is too old: per-channel QuantizeLinear/DequantizeLinear need {MIN_OPSET}+")
    if opset > onnx.defs.onnx_opset_version():
        raise QdgError(f"opset {opset} is newer than this onnx package supports ({onnx.defs.onnx_opset_version()})")
    # residual_qdq: off by default. A model without residual quantizers adds the float identity, so a Q/DQ there is
    # not exact (measured on random ResNet-18: agreement 0.99 at 8-bit, 0.74-0.88 at 4-bit activations);
    # --residual-qdq follows TensorRT's advice. A model whose scheme trains residual quantizers (trt/ort,
    # `Scheme.residual`) has them as fx nodes: their Q/DQ are always written and exact, and this flag then finds
    # nothing left to add.
    return Settings(
        target,
        opset,
        fp32,
        bool(residual_qdq) and not fp32,
        trained_for_ort(model) if int_bias is None else int_bias,
        graph,
    )


def lower_to_onnx(
    model: nn.Module,
    input_shape,
    *,
    target: str = "ort",
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    fp32: bool = False,
    residual_qdq: bool | None = None,
    int_bias: bool | None = None,
    graph: str = "exact",
) -> LoweredGraph:
    """The model's ONNX graph (in memory) and the lowering records (layers, clips, requantizations, probes).

    int_bias (target ort): keep the bias inside the convs ORT can run as QLinearConv, which rounds it to
    int32 in s_x·s_w units (fast; exact for layers trained with integer biases, quant/bias.py, whose bias is
    on that grid; not exact for older runs whose trained bias is not); False keeps every
    bias a float Add (exact, but ORT then runs those convs in float). None (default): int32 only for a
    model trained for ORT (unsigned activations, scheme `ort`), where fusion is the point; a model trained
    for TensorRT gains nothing from it on ORT (its int8 zero-point-0 ReLUs do not fold), so it stays exact."""
    settings = _settings(model, target, opset, fp32, residual_qdq, int_bias, graph)
    was_training = model.training
    model.eval()
    try:
        if not fp32:
            check_ready(model)
        gm = trace(model)
        low = _Lowering(model, gm, settings)
        low.input_shape = input_shape
        with torch.no_grad():
            out = [o for o in (low.node(n) for n in gm.graph.nodes) if o is not None]
            low.g.add("Identity", [low.g.arg(out[0])], OUTPUT)
            lower_transformer.finish(low)
            out_shape = list(model(torch.zeros(1, *input_shape)).shape[1:])
    finally:
        model.train(was_training)
    proto = low.g.model(input_shape, out_shape, dynamic_batch)
    return LoweredGraph(
        proto,
        settings,
        dynamic_batch,
        low.layers,
        low.residual_quant,
        low.residual_qdq,
        low.g.probes,
        low.g.weight_bits,
    )

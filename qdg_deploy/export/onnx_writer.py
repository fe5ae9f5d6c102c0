"""Our own QDQ ONNX writer: torch.fx trace of the quantized model, one ONNX node group per fx node.

torch's exporters cannot carry the LSQ quantizers (see FACTS.md), so the graph is written here with
`onnx.helper`. Every quantized layer becomes

    x ─[Clip]─ QuantizeLinear ─[Clip on codes]─ DequantizeLinear ─┐
    int8 codes (initializer) ─ DequantizeLinear(axis=0) ──────────┴─ Conv / Gemm (+ folded BN, float bias)

with the same division and round-half-to-even as the torch fake-quant forward, so each quantized tensor
holds the same values. Targets: `tensorrt` (int8, zero point 0; residual Adds' identity inputs quantized)
and `ort` (uint8, so ONNX Runtime's U8S8 kernels run).
"""

from __future__ import annotations

import operator

import numpy as np
import onnx
import torch
import torch.fx
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ..errors import QdgError
from ..quant import QConv2d, QLinear, Quantizer, quant_layers
from ..quant.kernels import grid
from ..quant.layers import is_exact
from ..quant.norms import ExportMatchedAvgPool
from ..quant.ort_fusion import pool_quant
from ..quant.plan import Mode, layer_plan
from ..quant.tracing import conv_bn_pairs, trace
from .fold import fold_layer

TARGETS = ("tensorrt", "ort")
DEFAULT_OPSET = 17
MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
INPUT, OUTPUT = "input", "logits"


class _Writer:
    def __init__(self, model: nn.Module, target: str, fp32: bool, residual_qdq: bool, opset: int,
                 int_bias: bool = True):
        self.model, self.target, self.fp32, self.residual_qdq, self.opset = model, target, fp32, residual_qdq, opset
        self.int_bias = int_bias
        self.mods = dict(model.named_modules())
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: dict[str, str] = {}  # fx node name -> ONNX tensor name
        self.quantized_inputs: dict[str, str] = {}  # ONNX tensor -> its first activation DQ output
        self.layers: list[dict] = []
        self.probes: list[dict] = []
        self.residual: list[dict] = []
        self.residual_quant: list[dict] = []  # trained residual-Add quantizers (exact Q/DQ)
        self.prequantized: set[str] = set()  # fx nodes (MaxPool) whose output the ONNX graph has already quantized
        self.qdq_cache: dict[tuple[int, str], tuple[str, dict]] = {}  # (quantizer, input tensor) -> its DQ
        self.weight_bits: dict[str, int] = {}  # code initializer -> trained bits
        self._uid = 0

    # -- small helpers ---------------------------------------------------------------------------
    def uid(self, base: str) -> str:
        self._uid += 1
        return f"{base}_{self._uid}"

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def add(self, op: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> str:
        outs = [name] if n_out == 1 else [f"{name}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0]

    def arg(self, a) -> str:
        if not isinstance(a, torch.fx.Node):
            raise QdgError(f"cannot export a constant operand {a!r}")
        return self.names[a.name]

    # -- activations -------------------------------------------------------------------------------
    def act_qdq_shared(self, x: str, layer: str, aq, probe: bool = True) -> tuple[str, dict]:
        """act_qdq, once per (quantizer, input tensor): a quantizer applied twice to one tensor (a block's conv1
        and its identity) computes the same values, so both readers share one Q/DQ."""
        key = (id(aq), x)
        if key in self.qdq_cache:
            dq, info = self.qdq_cache[key]
            return dq, dict(info, shared=True)
        dq, info = self.act_qdq(x, layer, aq, probe=probe)
        self.qdq_cache[key] = (dq, info)
        return dq, info

    def act_qdq(self, x: str, layer: str, aq, probe: bool = True) -> tuple[str, dict]:
        if aq.transform == "daq":  # AlignQ: Erf-based CDF transform ahead of the Q/DQ
            from .daq import daq_act_qdq
            return daq_act_qdq(self, x, layer, aq)
        if not aq.qdq_activations:
            raise QdgError(f"{layer}: {aq.spec.quantizer} activations have non-uniform levels that "
                           "QuantizeLinear/DequantizeLinear cannot express; train with --quantizer lsq, "
                           "dorefa or uniform (or --act-bits 0) to export")
        spec = aq.spec
        s = np.float32(aq.scale().reshape(-1)[0].item())
        if aq.scale().numel() != 1:
            raise QdgError(f"{layer}: per-channel activation quantization cannot be exported")
        z, qmin, qmax = aq.zero_point_int(), aq.qmin, aq.qmax
        info = {"bits": spec.bits, "trained_range": [qmin, qmax], "trained_zero_point": z, "scale": float(s)}
        p = f"{layer}.act"
        if self.target == "ort":
            off = 128 if spec.signed else 0
            lo, hi, zp = qmin + off, qmax + off, z + off
            sc, zpn = self.const(f"{p}.scale", s), self.const(f"{p}.zero_point", np.uint8(zp))
            q = self.add("QuantizeLinear", [x, sc, zpn], f"{p}.q")
            if (lo, hi) != (0, 255):
                q = self.add("Clip", [q, self.const(f"{p}.code_min", np.uint8(lo)),
                                      self.const(f"{p}.code_max", np.uint8(hi))], f"{p}.code_clip")
                info["clip"] = f"uint8 codes clipped to [{lo}, {hi}] between Q and DQ"
            info.update(type="uint8", zero_point=zp, exact=True)
        else:
            exact = z == 0 and qmin >= -128 and qmax <= 127
            lo_f, hi_f = np.float32(qmin - z) * s, np.float32(qmax - z) * s
            if exact:
                s2 = s
            else:  # TensorRT takes zero point 0 only: a symmetric int8 grid over the trained range
                s2 = np.float32(max(abs(lo_f), abs(hi_f)) / 127.0)
                info["requantized"] = f"zero point {z}, range [{qmin}, {qmax}] -> int8 symmetric, scale {float(s2):.6g}"
            if not exact or (qmin, qmax) != (-128, 127):
                x = self.add("Clip", [x, self.const(f"{p}.min", np.float32(lo_f)),
                                      self.const(f"{p}.max", np.float32(hi_f))], f"{p}.clip")
                info["clip"] = f"float Clip to [{float(lo_f):.6g}, {float(hi_f):.6g}] before Q"
            sc, zpn = self.const(f"{p}.scale", s2), self.const(f"{p}.zero_point", np.int8(0))
            q = self.add("QuantizeLinear", [x, sc, zpn], f"{p}.q")
            info.update(type="int8", zero_point=0, exact=bool(exact))
        dq = self.add("DequantizeLinear", [q, sc, zpn], f"{p}.dq")
        if probe:
            self.probes.append({"kind": "act", "layer": layer, "tensor": dq})
        return dq, info

    # -- layers ------------------------------------------------------------------------------------
    def layer(self, n: torch.fx.Node, m: nn.Module, bn_node: torch.fx.Node | None):
        name = n.target
        bn = self.mods[bn_node.target] if bn_node is not None else None
        x = self.arg(n.args[0])
        entry = {"layer": name, "op": "Conv" if isinstance(m, nn.Conv2d) else "Gemm",
                 "bn_folded": bn_node.target if bn_node is not None else None}
        quant = not self.fp32 and isinstance(m, (QConv2d, QLinear))
        aq = m.act_quant if quant else None
        if aq is not None:
            x, entry["act"] = self.act_qdq_shared(x, name, aq)
            self.quantized_inputs.setdefault(self.arg(n.args[0]), x)
        fw = fold_layer(m, bn, quant)
        if fw.codes is not None:
            codes = self.const(f"{name}.weight_q", fw.codes)
            self.weight_bits[codes] = fw.bits
            w = self.add("DequantizeLinear", [codes, self.const(f"{name}.weight_scale", fw.scales),
                                              self.const(f"{name}.weight_zero_point", np.zeros(len(fw.scales), np.int8))],
                         f"{name}.weight_dq", axis=0)
            entry.update(weight_bits=fw.bits, weight_only=aq is None)
        else:
            w = self.const(f"{name}.weight", fw.weight)
        out_node = bn_node or n
        exact = quant and is_exact(m)
        fused = exact and self.ort_fused(m)
        if exact and not fused:
            self.exact_layer(n, m, name, x, w, out_node, entry)
            return
        # Here: float layers, weight-only layers, and layers ORT runs as integer kernels (QLinearConv/QGemm into
        # the next quantizer), which the model's eval forward computes as those kernels do (quant/kernels.py). Such a
        # kernel holds the bias as int32 in units of s_x·s_w; these layers were trained with integer biases
        # (quant/bias.py), so theirs is on that grid already and ORT's rounding changes nothing. A gamma-0 channel
        # outputs its BN shift, which is not on the grid: that layer keeps a float Add (and ORT does not fuse it;
        # the report's ort_kernel_mismatch names it).
        bias_inside = fw.bias is not None and (fw.codes is None or (fused and not fw.zero_factor))
        ins = [x, w] + ([self.const(f"{name}.bias", fw.bias)] if bias_inside else [])
        entry["bias"] = ("float Add" if not bias_inside else "on the int32 grid (exact in integer kernels)"
                         if fw.codes is not None else "float (in the op)") if fw.bias is not None else None
        if fused:
            entry["exact"] = "computes as ORT's integer kernel into the next quantizer (QLinearConv / QGemm)"
        y = self.op(m, name, ins)
        if fw.bias is not None and not bias_inside:
            shape = (-1, 1, 1) if isinstance(m, nn.Conv2d) else (-1,)
            y = self.add("Add", [y, self.const(f"{name}.bias", fw.bias.reshape(shape))], f"{name}.bias_add")
        self.names[out_node.name] = y
        self.probes.append({"kind": "node", "layer": out_node.target if out_node.op == "call_module" else out_node.name,
                            "fx": out_node.name, "tensor": y})
        if quant:
            self.layers.append(entry)

    def ort_fused(self, m: nn.Module) -> bool:
        """Whether ORT CPU runs this layer as an integer kernel into its output quantizer (quant/ort_fusion.py), as
        the model's eval forward computes it: target ort with integer biases (the default for such models)."""
        return self.target == "ort" and self.int_bias and layer_plan(m).mode is Mode.ORT_KERNEL

    def exact_layer(self, n, m, name: str, x: str, w: str, out_node, entry: dict):
        """A layer on the exact eval path (quant/kernels.py): the float op without bias, snapped to its integer
        accumulator (Div, Round, Mul by the folded unit s_x·s_w), then the folded bias: torch and any runtime
        then hold the same float32 values whatever order their kernels sum in."""
        g = grid(m)
        conv = isinstance(m, nn.Conv2d)
        shape = (-1, 1, 1) if conv else (-1,)
        y = self.op(m, name, [x, w])
        unit = self.const(f"{name}.acc_unit", g.unit.numpy().reshape(shape))
        y = self.add("Div", [y, unit], f"{name}.acc")
        y = self.add("Mul", [self.add("Round", [y], f"{name}.acc_round"), unit], f"{name}.acc_scaled")
        if g.bias is not None:
            y = self.add("Add", [y, self.const(f"{name}.bias", g.bias.numpy().reshape(shape))], f"{name}.bias_add")
        entry.update(exact="integer accumulator snapped (Div, Round, Mul), bias a float Add",
                     bias="float Add" if g.bias is not None else None)
        self.names[out_node.name] = y
        self.probes.append({"kind": "node", "layer": out_node.target if out_node.op == "call_module" else out_node.name,
                            "fx": out_node.name, "tensor": y})
        self.layers.append(entry)

    def op(self, m: nn.Module, name: str, ins: list[str]) -> str:
        """The layer's Conv or Gemm node on inputs `ins` (x, w[, bias])."""
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise QdgError(f"{name}: only zero padding given as numbers can be exported")
            ph, pw = m.padding
            return self.add("Conv", ins, f"{name}.conv", kernel_shape=list(m.kernel_size), strides=list(m.stride),
                            pads=[ph, pw, ph, pw], dilations=list(m.dilation), group=m.groups)
        return self.add("Gemm", ins, f"{name}.gemm", transB=1)

    def reduce_axes(self, p: str) -> dict:
        """ReduceMean over axes 2, 3: an input from opset 18, an attribute before."""
        if self.opset >= 18:
            return {"inputs": [self.const(f"{p}.axes", np.array([2, 3], np.int64))], "attrs": {}}
        return {"inputs": [], "attrs": {"axes": [2, 3]}}

    def global_avg_pool(self, x: str, p: str) -> str:
        """quant.norms.ExportMatchedAvgPool: the mean in float64, one cast to float32."""
        axes = self.reduce_axes(p)
        xd = self.add("Cast", [x], f"{p}.to_double", to=TensorProto.DOUBLE)
        mean = self.add("ReduceMean", [xd, *axes["inputs"]], f"{p}.mean", keepdims=1, **axes["attrs"])
        return self.add("Cast", [mean], f"{p}.to_float", to=TensorProto.FLOAT)

    def group_norm(self, n, m: nn.GroupNorm) -> str:
        """GroupNorm as a quantized model computes it in eval mode (quant.norms.ExportMatchedGroupNorm): moments
        and rstd in float64, then per channel y = x * (rstd * gamma) + (beta - mean * rstd * gamma) in float32."""
        x, p = self.arg(n.args[0]), n.target
        g, c = m.num_groups, m.num_channels
        xr = self.add("Reshape", [x, self.const(f"{p}.groups_shape", np.array([0, g, c // g, -1], np.int64))],
                      f"{p}.reshape")
        axes = self.reduce_axes(p)
        # moments in float64: both runtimes then round them to the same float32 values
        xd = self.add("Cast", [xr], f"{p}.to_double", to=TensorProto.DOUBLE)
        mean = self.add("ReduceMean", [xd, *axes["inputs"]], f"{p}.mean", keepdims=1, **axes["attrs"])
        d = self.add("Sub", [xd, mean], f"{p}.centered")
        var = self.add("ReduceMean", [self.add("Mul", [d, d], f"{p}.sq"), *axes["inputs"]], f"{p}.var", keepdims=1,
                       **axes["attrs"])
        # 1/sqrt(var + eps) in float64 too: ORT's float Sqrt is not correctly rounded (a fast approximation),
        # its double one is; one cast to float32 at the end then gives the same value in both runtimes
        std = self.add("Sqrt", [self.add("Add", [var, self.const(f"{p}.eps", np.float64(m.eps))], f"{p}.var_eps")],
                       f"{p}.std")
        rstd_d = self.add("Div", [self.const(f"{p}.one", np.float64(1.0)), std], f"{p}.rstd_double")
        rstd = self.add("Cast", [rstd_d], f"{p}.rstd", to=TensorProto.FLOAT)
        f32 = {"mean": self.add("Cast", [mean], f"{p}.mean_f32", to=TensorProto.FLOAT)}
        gamma = m.weight.detach().numpy() if m.affine else np.ones(c, np.float32)
        beta = m.bias.detach().numpy() if m.affine else np.zeros(c, np.float32)
        scale = self.add("Mul", [rstd, self.const(f"{p}.weight", gamma.reshape(g, c // g, 1))], f"{p}.scale")
        shift = self.add("Sub", [self.const(f"{p}.bias", beta.reshape(g, c // g, 1)),
                                 self.add("Mul", [f32["mean"], scale], f"{p}.mean_scale")], f"{p}.shift")
        y = self.add("Add", [self.add("Mul", [xr, scale], f"{p}.mul"), shift], f"{p}.add")
        return self.add("Reshape", [y, self.add("Shape", [x], f"{p}.shape")], f"{p}.unshape")

    def module(self, n: torch.fx.Node, bn_of: dict) -> str | None:
        m = self.mods[n.target]
        p = n.target
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            self.layer(n, m, bn_of.get(n.name))
            return None
        x = self.arg(n.args[0])
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            return self.add("BatchNormalization", [x, self.const(f"{p}.weight", m.weight.detach().numpy()),
                                                   self.const(f"{p}.bias", m.bias.detach().numpy()),
                                                   self.const(f"{p}.mean", m.running_mean.numpy()),
                                                   self.const(f"{p}.var", m.running_var.numpy())],
                            self.uid(p), epsilon=float(m.eps)) if c else None
        if isinstance(m, nn.ReLU):
            return self.add("Relu", [x], self.uid(p))
        if isinstance(m, Quantizer):  # a residual Add's input (the block's identity or main branch)
            if self.fp32:
                return x
            dq, info = self.act_qdq_shared(x, p, m, probe=False)
            self.residual_quant.append({"quantizer": p, **info})
            return dq
        if isinstance(m, nn.MaxPool2d):
            pre = None if self.fp32 else pool_quant(n, self.mods)
            if pre is not None:
                x, _ = self.act_qdq(x, f"{p}.pre", pre, probe=False)
                self.prequantized.add(n.name)
            k, s, pd, d = (_pair(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.padding, m.dilation))
            return self.add("MaxPool", [x], self.uid(p), kernel_shape=k, strides=s, pads=pd + pd, dilations=d,
                            ceil_mode=int(m.ceil_mode))
        if isinstance(m, nn.AdaptiveAvgPool2d) and _pair(m.output_size) == [1, 1]:
            if isinstance(m, ExportMatchedAvgPool) and not self.fp32:
                return self.global_avg_pool(x, p)
            return self.add("GlobalAveragePool", [x], self.uid(p))
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return self.add("Flatten", [x], self.uid(p), axis=1)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return x
        if isinstance(m, nn.GroupNorm):
            return self.group_norm(n, m)
        raise QdgError(f"cannot export module {p!r} of type {type(m).__name__}")

    def function(self, n: torch.fx.Node) -> str:
        f = n.target
        if f in (operator.add, torch.add) and len(n.args) == 2 and not n.kwargs:
            a, b = self.arg(n.args[0]), self.arg(n.args[1])
            if self.residual_qdq:
                qa, qb = self.quantized_inputs.get(a), self.quantized_inputs.get(b)
                if qa or qb:
                    self.residual.append({"add": n.name, "quantized_inputs": [t for t, q in ((a, qa), (b, qb)) if q]})
                a, b = qa or a, qb or b
            return self.add("Add", [a, b], self.uid(n.name))
        if f in (F.relu, torch.relu):
            return self.add("Relu", [self.arg(n.args[0])], self.uid(n.name))
        if f is torch.flatten and tuple(n.args[1:]) in ((1,), (1, -1)) and not n.kwargs:
            return self.add("Flatten", [self.arg(n.args[0])], self.uid(n.name), axis=1)
        raise QdgError(f"cannot export function {getattr(f, '__name__', f)!r} (fx node {n.name})")

    def method(self, n: torch.fx.Node) -> str:
        if n.target == "flatten" and tuple(n.args[1:]) in ((1,), (1, -1)):
            return self.add("Flatten", [self.arg(n.args[0])], self.uid(n.name), axis=1)
        if n.target in ("relu", "relu_"):
            return self.add("Relu", [self.arg(n.args[0])], self.uid(n.name))
        raise QdgError(f"cannot export tensor method .{n.target}() (fx node {n.name})")


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def check_ready(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if hasattr(m, "initialized") and hasattr(m, "spec") and not bool(m.initialized):
            raise QdgError(f"quantizer {name} was never initialized: run a calibration forward before export")


def trained_for_ort(model: nn.Module) -> bool:
    """Whether every activation quantizer is unsigned (the `ort` scheme's ReLU-foldable uint8)."""
    acts = [m.act_quant for m in quant_layers(model).values() if m.act_quant is not None]
    return bool(acts) and all(not a.spec.signed for a in acts)


def build_onnx(model: nn.Module, input_shape, *, target: str = "ort", opset: int = DEFAULT_OPSET,
               dynamic_batch: bool = True, fp32: bool = False, residual_qdq: bool | None = None,
               int_bias: bool | None = None) -> tuple[onnx.ModelProto, dict]:
    """The ONNX model and what the writer did (layers, clips, requantizations, probes).

    int_bias (target ort): keep the bias inside the convs ORT can run as QLinearConv, which rounds it to
    int32 in s_x·s_w units (fast; exact for layers trained with integer biases, quant/bias.py, whose bias is
    on that grid; not exact for older runs whose trained bias is not); False keeps every
    bias a float Add (exact, but ORT then runs those convs in float). None (default): int32 only for a
    model trained for ORT (unsigned activations, scheme `ort`), where fusion is the point; a model trained
    for TensorRT gains nothing from it on ORT (its int8 zero-point-0 ReLUs do not fold), so it stays exact."""
    if int_bias is None:
        int_bias = trained_for_ort(model)
    if target not in TARGETS:
        raise QdgError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if opset < MIN_OPSET:
        raise QdgError(f"opset {opset} is too old: per-channel QuantizeLinear/DequantizeLinear need {MIN_OPSET}+")
    if opset > onnx.defs.onnx_opset_version():
        raise QdgError(f"opset {opset} is newer than this onnx package supports ({onnx.defs.onnx_opset_version()})")
    # Off by default: a model without residual quantizers adds the float identity, so a Q/DQ there is not exact
    # (measured on random ResNet-18: agreement 0.99 at 8-bit, 0.74-0.88 at 4-bit activations). --residual-qdq
    # follows TensorRT's advice. A model whose scheme trains residual quantizers (trt/ort, `Scheme.residual`) has
    # them as fx nodes: their Q/DQ are always written and exact, and this flag then finds nothing left to add.
    residual_qdq = False if residual_qdq is None else residual_qdq
    was_training = model.training
    model.eval()
    try:
        if not fp32:
            check_ready(model)
        gm = trace(model)
        w = _Writer(model, target, fp32, residual_qdq and not fp32, opset, int_bias)
        bn_of = conv_bn_pairs(gm, w.mods)
        folded_bn = {b.name for b in bn_of.values()}
        outputs = []
        with torch.no_grad():
            for n in gm.graph.nodes:
                if n.op == "placeholder":
                    w.names[n.name] = INPUT
                elif n.op == "call_module":
                    if n.name in folded_bn:
                        continue  # written with its conv
                    y = w.module(n, bn_of)
                    if y is not None:
                        w.names[n.name] = y
                        if n.name not in w.prequantized:  # torch's pool output is float there: no probe
                            w.probes.append({"kind": "node", "layer": n.target, "fx": n.name, "tensor": y})
                elif n.op == "call_function":
                    w.names[n.name] = w.function(n)
                    w.probes.append({"kind": "node", "layer": n.name, "fx": n.name, "tensor": w.names[n.name]})
                elif n.op == "call_method":
                    w.names[n.name] = w.method(n)
                elif n.op == "output":
                    outputs = n.args[0] if isinstance(n.args[0], (tuple, list)) else [n.args[0]]
                else:
                    raise QdgError(f"cannot export fx node {n.op} {n.target}")
        if len(outputs) != 1:
            raise QdgError("only single-output models can be exported")
        w.add("Identity", [w.arg(outputs[0])], OUTPUT)
        with torch.no_grad():
            out_shape = list(model(torch.zeros(1, *input_shape)).shape[1:])
    finally:
        model.train(was_training)
    batch = "batch" if dynamic_batch else 1
    graph = helper.make_graph(w.nodes, "qdg_deploy", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, *input_shape])],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch, *out_shape])], w.inits)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="qdg-deploy",
                              ir_version=helper.find_min_ir_version_for(opsets, ignore_unknown=True))
    onnx.checker.check_model(proto, full_check=True)
    info = {"target": target, "opset": opset, "dynamic_batch": dynamic_batch, "fp32": fp32, "int_bias": int_bias,
            "layers": w.layers, "residual_qdq": w.residual, "residual_quantizers": w.residual_quant, "probes": w.probes, "weight_bits": w.weight_bits}
    return proto, info

"""Lowering: a Conv2d / Linear (its BatchNorm folded in) as its plan says (quant/plan.py).

    x ─[activation Q/DQ]─┐
    int8 codes ─ DequantizeLinear(axis=0) ─┴─ Conv / Gemm ─ ...
    (weight-only layers on target ort: int8 codes ─ Cast ─ Mul(scales), which ORT folds: lower_qdq.weight_dq)

then, by the layer's lowering: a float op with its bias inside, or a float Add (weight-only, fake-quant, and
layers whose bias an integer kernel would round); the integer accumulator snapped (Div, Round, Mul by the folded
unit, then the folded bias as an Add); or, where ORT runs the layer as QLinearConv / QGemm into its output
quantizer, the bias on the int32 grid inside the op, which that kernel holds exactly. A snapped classifier (a Gemm
with float output, target ort) needs no snap ops: ORT runs it as QGemm, whose float output is float32(acc) times
the float32 unit s_x·s_w, the very value the snap computes; its bias follows as an Add.
"""

from __future__ import annotations

import torch.fx
from torch import nn

from ..errors import QdgError
from ..quant import QConv2d, QLinear
from ..quant.kernels import grid
from ..quant.layers import is_exact
from ..quant.plan import Mode, layer_plan
from .fold import fold_layer
from .graph_builder import GraphBuilder
from .lower_qdq import act_qdq_shared, weight_dq
from .records import Bias, LayerRecord, Lowered


def lower_layer(
    g: GraphBuilder, n: torch.fx.Node, m: nn.Module, bn_node: torch.fx.Node | None, bn: nn.BatchNorm2d | None
) -> LayerRecord | None:
    """Write the layer (and the BatchNorm `bn` it folds); returns its record, None for a float layer."""
    name = n.target
    quant = not g.settings.fp32 and isinstance(m, (QConv2d, QLinear))
    rec = LayerRecord(
        layer=name,
        op="Conv" if isinstance(m, nn.Conv2d) else "Gemm",
        bn_folded=bn_node.target if bn_node is not None else None,
    )
    x = g.arg(n.args[0])
    aq = m.act_quant if quant else None
    if aq is not None:
        x, rec.act = act_qdq_shared(g, x, name, aq)
        g.quantized_inputs.setdefault(g.arg(n.args[0]), x)
    fw = fold_layer(m, bn, quant)
    w = weight_dq(g, name, fw, weight_only=aq is None)
    if fw.codes is not None:
        rec.weight_bits, rec.weight_only, rec.weight_codes = fw.bits, aq is None, f"{name}.weight_q"
    out_node = bn_node or n
    if quant and is_exact(m) and not ort_kernel(g, m) and g.settings.exact:
        y = _snapped(g, m, name, x, w, rec, snap=not ort_float_gemm(g, m, bn))
    else:
        y = _float_or_kernel(g, m, name, x, w, fw, rec, kernel=quant and is_exact(m))
    g.names[out_node.name] = y
    g.probe("node", out_node.target if out_node.op == "call_module" else out_node.name, y, fx=out_node.name)
    return rec if quant else None


def ort_kernel(g: GraphBuilder, m: nn.Module) -> bool:
    """Whether ORT CPU runs this layer as an integer kernel into its output quantizer (quant/ort_fusion.py), as
    the model's eval forward computes it: target ort with integer biases (the default for such models)."""
    return g.settings.ort_kernels and layer_plan(m).mode is Mode.ORT_KERNEL


def ort_float_gemm(g: GraphBuilder, m: nn.Module, bn) -> bool:
    """Whether ORT CPU runs this snapped Linear (no output quantizer, e.g. the classifier) as QGemm with float
    output: target ort, planned with integer biases (the ort scheme's kernels), nothing folded into its unit."""
    p = layer_plan(m)
    return g.settings.ort_kernels and p.int_bias and isinstance(m, nn.Linear) and bn is None and p.mode is Mode.SNAPPED


def _float_or_kernel(g: GraphBuilder, m, name: str, x: str, w: str, fw, rec: LayerRecord, kernel: bool) -> str:
    """Float layers, weight-only layers, layers of a lean graph, and layers ORT runs as integer kernels (QLinearConv/QGemm into the next
    quantizer), which the model's eval forward computes as those kernels do (quant/kernels.py). Such a kernel holds
    the bias as int32 in units of s_x·s_w; these layers were trained with integer biases (quant/bias.py), so
    theirs is on that grid already and ORT's rounding changes nothing. A gamma-0 channel outputs its BN shift,
    which is not on the grid: that layer keeps a float Add (and ORT does not fuse it; the report's
    ort_kernel_mismatch names it)."""
    kernel = kernel and ort_kernel(g, m)
    # a lean graph keeps every bias in its op, as other exporters write it
    inside = fw.bias is not None and (fw.codes is None or (kernel and not fw.zero_factor) or not g.settings.exact)
    if fw.bias is not None:
        rec.bias = Bias.FLOAT_ADD if not inside else Bias.INT32_GRID if fw.codes is not None else Bias.IN_OP
    rec.lowered, rec.zero_factor = (Lowered.ORT_KERNEL if kernel else Lowered.FLOAT_OP), fw.zero_factor
    y = op(g, m, name, [x, w] + ([g.const(f"{name}.bias", fw.bias)] if inside else []), rec)
    if fw.bias is not None and not inside:
        shape = (-1, 1, 1) if isinstance(m, nn.Conv2d) else (-1,)
        y = g.add("Add", [y, g.const(f"{name}.bias", fw.bias.reshape(shape))], f"{name}.bias_add")
    return y


def _snapped(g: GraphBuilder, m, name: str, x: str, w: str, rec: LayerRecord, snap: bool = True) -> str:
    """A layer on the exact eval path (quant/kernels.py): the float op without bias, snapped to its integer
    accumulator (Div, Round, Mul by the folded unit s_x·s_w), then the folded bias: torch and any runtime
    then hold the same float32 values whatever order their kernels sum in. snap=False (ort_float_gemm): ORT's
    QGemm already outputs acc · unit (measured bit for bit against ORT 1.32), so only the bias Add follows."""
    gr = grid(m)
    shape = (-1, 1, 1) if isinstance(m, nn.Conv2d) else (-1,)
    y = op(g, m, name, [x, w], rec)
    if snap:
        unit = g.const(f"{name}.acc_unit", gr.unit.numpy().reshape(shape))
        y = g.add("Div", [y, unit], f"{name}.acc")
        y = g.add("Mul", [g.add("Round", [y], f"{name}.acc_round"), unit], f"{name}.acc_scaled")
    if gr.bias is not None:
        y = g.add("Add", [y, g.const(f"{name}.bias", gr.bias.numpy().reshape(shape))], f"{name}.bias_add")
    rec.lowered = Lowered.SNAPPED if snap else Lowered.ORT_KERNEL
    rec.bias = Bias.FLOAT_ADD if gr.bias is not None else None
    return y


def op(g: GraphBuilder, m: nn.Module, name: str, ins: list[str], rec: LayerRecord) -> str:
    """The layer's Conv or Gemm node on inputs `ins` (x, w[, bias])."""
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise QdgError(f"{name}: only zero padding given as numbers can be exported")
        ph, pw = m.padding
        rec.op_node = f"{name}.conv"
        return g.add(
            "Conv",
            ins,
            rec.op_node,
            kernel_shape=list(m.kernel_size),
            strides=list(m.stride),
            pads=[ph, pw, ph, pw],
            dilations=list(m.dilation),
            group=m.groups,
        )
    rec.op_node = f"{name}.gemm"
    return g.add("Gemm", ins, rec.op_node, transB=1)

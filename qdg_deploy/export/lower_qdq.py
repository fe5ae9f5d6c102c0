"""Lowering: activation QuantizeLinear / DequantizeLinear pairs, and weight codes with their DequantizeLinear.

Each activation quantizer becomes x ─[Clip]─ QuantizeLinear ─[Clip on codes]─ DequantizeLinear with the same
division and round-half-to-even as the torch fake-quant forward, so the quantized tensor holds the same values.
`ort` writes uint8 (ONNX Runtime's U8S8 kernels); `tensorrt` int8 with zero point 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from onnx import TensorProto

from ..errors import QdgError
from ..quant import Quantizer
from .fold import FoldedWeight
from .graph_builder import GraphBuilder
from .lower_daq import daq_act_qdq
from .records import ActRecord


def act_qdq_shared(g: GraphBuilder, x: str, layer: str, aq: Quantizer, probe: bool = True) -> tuple[str, ActRecord]:
    """act_qdq, once per (quantizer, input tensor): a quantizer applied twice to one tensor (a block's conv1
    and its identity) computes the same values, so both readers share one Q/DQ."""
    key = (id(aq), x)
    if key in g.qdq_cache:
        dq, rec = g.qdq_cache[key]
        return dq, dataclasses.replace(rec, shared=True)
    dq, rec = act_qdq(g, x, layer, aq, probe=probe)
    g.qdq_cache[key] = (dq, rec)
    return dq, rec


def act_qdq(g: GraphBuilder, x: str, layer: str, aq: Quantizer, probe: bool = True) -> tuple[str, ActRecord]:
    if aq.transform == "daq":  # AlignQ: Erf-based CDF transform ahead of the Q/DQ
        return daq_act_qdq(g, x, layer, aq)
    if not aq.qdq_activations:
        raise QdgError(
            f"{layer}: {aq.spec.quantizer} activations have non-uniform levels that "
            "QuantizeLinear/DequantizeLinear cannot express; train with --quantizer lsq, "
            "dorefa or uniform (or --act-bits 0) to export"
        )
    s = np.float32(aq.scale().reshape(-1)[0].item())
    if aq.scale().numel() != 1:
        raise QdgError(f"{layer}: per-channel activation quantization cannot be exported")
    rec = ActRecord(
        bits=aq.spec.bits, trained_range=[aq.qmin, aq.qmax], trained_zero_point=aq.zero_point_int(), scale=float(s)
    )
    lower = _uint8_qdq if g.target == "ort" else _int8_qdq
    q, sc, zpn = lower(g, x, f"{layer}.act", aq, s, rec)
    dq = g.add("DequantizeLinear", [q, sc, zpn], f"{layer}.act.dq")
    if probe:
        g.probe("act", layer, dq)
    return dq, rec


def _uint8_qdq(g: GraphBuilder, x: str, p: str, aq: Quantizer, s: np.float32, rec: ActRecord):
    """uint8 codes (a signed grid shifted by 128): exact; a Clip on the codes where the trained range is narrower."""
    off = 128 if aq.spec.signed else 0
    lo, hi, zp = aq.qmin + off, aq.qmax + off, aq.zero_point_int() + off
    sc, zpn = g.const(f"{p}.scale", s), g.const(f"{p}.zero_point", np.uint8(zp))
    q = g.add("QuantizeLinear", [x, sc, zpn], f"{p}.q")
    if (lo, hi) != (0, 255):
        q = g.add(
            "Clip",
            [q, g.const(f"{p}.code_min", np.uint8(lo)), g.const(f"{p}.code_max", np.uint8(hi))],
            f"{p}.code_clip",
        )
        rec.clip = f"uint8 codes clipped to [{lo}, {hi}] between Q and DQ"
    rec.type, rec.zero_point, rec.exact = "uint8", zp, True
    return q, sc, zpn


def _int8_qdq(g: GraphBuilder, x: str, p: str, aq: Quantizer, s: np.float32, rec: ActRecord):
    """int8 with zero point 0 (TensorRT): exact where the trained grid is that; else a symmetric int8 grid over
    the trained range (requantized); a float Clip before Q where the range is narrower than int8's."""
    z, qmin, qmax = aq.zero_point_int(), aq.qmin, aq.qmax
    exact = z == 0 and qmin >= -128 and qmax <= 127
    lo_f, hi_f = np.float32(qmin - z) * s, np.float32(qmax - z) * s
    s2 = s
    if not exact:
        s2 = np.float32(max(abs(lo_f), abs(hi_f)) / 127.0)
        rec.requantized = f"zero point {z}, range [{qmin}, {qmax}] -> int8 symmetric, scale {float(s2):.6g}"
    if not exact or (qmin, qmax) != (-128, 127):
        x = g.add(
            "Clip", [x, g.const(f"{p}.min", np.float32(lo_f)), g.const(f"{p}.max", np.float32(hi_f))], f"{p}.clip"
        )
        rec.clip = f"float Clip to [{float(lo_f):.6g}, {float(hi_f):.6g}] before Q"
    sc, zpn = g.const(f"{p}.scale", s2), g.const(f"{p}.zero_point", np.int8(0))
    q = g.add("QuantizeLinear", [x, sc, zpn], f"{p}.q")
    rec.type, rec.zero_point, rec.exact = "int8", 0, bool(exact)
    return q, sc, zpn


def weight_dq(g: GraphBuilder, name: str, fw: FoldedWeight, weight_only: bool = False) -> str:
    """The layer's weights: int8 codes and per-channel scales into DequantizeLinear(axis 0), or float weights.

    A weight-only layer on target ort: codes ─ Cast(float) ─ Mul(scales [C, 1, ...]) instead, the same float32
    values (each code times its scale, one rounding) from ordinary ops, which ORT's constant folding computes
    once at session creation; the Conv then reads constant float weights that ORT pre-packs (NCHWc) as in the
    FP32 export. ORT's ConstantFolding skips DequantizeLinear while its QDQ optimizations are on (its default;
    session.disable_quant_qdq=1 turns both off), so a DequantizeLinear'd weight is dequantized on every run and
    its Conv is not pre-packed. TensorRT keeps DequantizeLinear on weights, its explicit-quantization pattern."""
    if fw.codes is None:
        return g.const(f"{name}.weight", fw.weight)
    codes = g.const(f"{name}.weight_q", fw.codes)
    assert fw.bits is not None  # fold_layer sets bits with codes
    g.weight_bits[codes] = fw.bits
    if weight_only and g.target == "ort":
        scales = fw.scales.reshape((-1,) + (1,) * (fw.codes.ndim - 1))
        w = g.add("Cast", [codes], f"{name}.weight_cast", to=TensorProto.FLOAT)
        return g.add("Mul", [w, g.const(f"{name}.weight_scale", scales)], f"{name}.weight_dq")
    return g.add(
        "DequantizeLinear",
        [
            codes,
            g.const(f"{name}.weight_scale", fw.scales),
            g.const(f"{name}.weight_zero_point", np.zeros(len(fw.scales), np.int8)),
        ],
        f"{name}.weight_dq",
        axis=0,
    )

"""AlignQ's DAQ activation quantizer as ONNX ops: the normal-CDF transform (Erf), then one Q/DQ pair.

torch (quant/daq.py) computes, with n = 2^k - 1 and R the activation range:
    Phi = 0.5 * (1 + erf(x / sqrt(2)));  r = round(Phi / float32(1/n));  a_q = (2r - n) * float32(R / n)
written here as
    x ─Mul(1/√2)─Erf─Add(1)─Mul(0.5)─Div(1/n)─Round─Mul(2)─Sub(n)─Mul(R/n)─QuantizeLinear─DequantizeLinear─ Conv
The codes 2r - n are odd integers in [-n, n]: k + 1 signed bits (k <= 7 fits int8; the `ort` target
stores them as uint8 with zero point 128). Round is half-to-even, like torch.round; the Q/DQ pair
(scale R/n) reproduces a_q exactly and marks the conv input as quantized for the runtime.
Weights need nothing here: their DAQ codes and scale 1/n go through the writer's ordinary weight path.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import QdgError
from .records import ActRecord


def daq_act_qdq(w, x: str, layer: str, aq) -> tuple[str, ActRecord]:
    """Emit the DAQ activation transform + Q/DQ on tensor x into the graph builder `w`."""
    n = aq.n
    step = np.float32(aq.scale().reshape(-1)[0].item())  # float32(R / n), as the torch forward uses
    p = f"{layer}.act.daq"
    f32 = np.float32
    y = w.add("Mul", [x, w.const(f"{p}.inv_sqrt2", f32(1.0 / math.sqrt(2.0)))], f"{p}.scale_in")
    y = w.add("Erf", [y], f"{p}.erf")
    y = w.add("Add", [y, w.const(f"{p}.one", f32(1.0))], f"{p}.add1")
    y = w.add("Mul", [y, w.const(f"{p}.half", f32(0.5))], f"{p}.cdf")
    y = w.add("Div", [y, w.const(f"{p}.inv_n", f32(1.0 / n))], f"{p}.div")
    y = w.add("Round", [y], f"{p}.round")
    y = w.add("Mul", [y, w.const(f"{p}.two", f32(2.0))], f"{p}.mul2")
    y = w.add("Sub", [y, w.const(f"{p}.n", f32(n))], f"{p}.codes")
    y = w.add("Mul", [y, w.const(f"{p}.step", step)], f"{p}.value")
    q = f"{layer}.act"
    if w.target == "ort":
        zp_val, zp = 128, np.uint8(128)
        typ = "uint8"
    else:
        zp_val, zp = 0, np.int8(0)
        typ = "int8"
    if n > 127:
        raise QdgError(
            f"{layer}: {aq.spec.bits}-bit DAQ codes span [-{n}, {n}], wider than 8 bits; "
            "export supports DAQ up to 7 bits"
        )
    sc, zpn = w.const(f"{q}.scale", step), w.const(f"{q}.zero_point", zp)
    qn = w.add("QuantizeLinear", [y, sc, zpn], f"{q}.q")
    dq = w.add("DequantizeLinear", [qn, sc, zpn], f"{q}.dq")
    w.probe("act", layer, dq)
    rec = ActRecord(
        bits=aq.spec.bits,
        trained_range=[-n, n],
        trained_zero_point=0,
        scale=float(step),
        type=typ,
        zero_point=zp_val,
        # Q/DQ reproduces the codes exactly, but ORT's Erf and torch's erf may differ in the last bit,
        # so an input within an ulp of a bin edge can take the neighbouring code.
        exact=False,
        inexact_because="Erf last-bit differences at DAQ bin edges",
        transform=f"daq: Erf normal CDF, round to {n} steps, odd codes 2r-{n} (k+1 = "
        f"{aq.spec.bits + 1} signed bits), range {aq.range_value():g}",
    )
    return dq, rec

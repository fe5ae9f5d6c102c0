"""What each lowering step wrote, as typed records: the export report is built from these (export/report.py), and
`as_json` gives the report's per-layer entries."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields


class Lowered(enum.Enum):
    """How a quantized layer was written: the plan's mode (quant/plan.py) as this target runs it."""

    FLOAT_OP = "float op"  # weight-only or fake-quant: dequantized codes (lower_qdq.weight_dq) into a float Conv / Gemm
    SNAPPED = "integer accumulator snapped (Div, Round, Mul), bias a float Add"
    ORT_KERNEL = "computes as ORT's integer kernel into the next quantizer (QLinearConv / QGemm)"


class Bias(enum.Enum):
    IN_OP = "float (in the op)"
    FLOAT_ADD = "float Add"
    INT32_GRID = "on the int32 grid (exact in integer kernels)"


def _json(record) -> dict:
    """The record's set fields in declaration order (None left out), enums as their labels."""
    out = {}
    for f in fields(record):
        v = getattr(record, f.name)
        if v is not None and f.metadata.get("json", True):
            out[f.name] = v.as_json() if hasattr(v, "as_json") else v.value if isinstance(v, enum.Enum) else v
    return out


@dataclass
class ActRecord:
    """One activation Q/DQ: the trained grid and the one written."""

    bits: int
    trained_range: list[int]
    trained_zero_point: int
    scale: float
    requantized: str | None = None  # TensorRT's zero point 0 forced a symmetric int8 grid (not exact)
    clip: str | None = None
    type: str = ""
    zero_point: int = 0
    exact: bool = True
    inexact_because: str | None = None
    transform: str | None = None  # a fixed nonlinearity ahead of the Q/DQ (DAQ)
    shared: bool | None = None  # this Q/DQ was written once for an earlier reader of the same tensor

    def as_json(self) -> dict:
        return _json(self)


@dataclass
class LayerRecord:
    """One quantized Conv2d / Linear."""

    layer: str
    op: str  # "Conv" | "Gemm"
    bn_folded: str | None
    act: ActRecord | None = None
    weight_bits: int | None = None
    weight_only: bool | None = None
    lowered: Lowered = field(default=Lowered.FLOAT_OP, metadata={"json": False})
    bias: Bias | None = field(default=None, metadata={"json": False})
    zero_factor: bool = field(default=False, metadata={"json": False})  # a BN gamma of 0 (bias stays a float Add)
    # the ONNX names this layer's weight codes and op node carry (what ORT's optimized graph is matched against)
    weight_codes: str | None = field(default=None, metadata={"json": False})
    op_node: str = field(default="", metadata={"json": False})

    def as_json(self) -> dict:
        out = _json(self)
        if self.lowered is Lowered.SNAPPED:
            out.update(exact=self.lowered.value, bias=self.bias.value if self.bias else None)
        else:
            out["bias"] = self.bias.value if self.bias else None
            if self.lowered is Lowered.ORT_KERNEL:
                out["exact"] = self.lowered.value
        out.pop("bn_folded", None)
        return {"layer": out.pop("layer"), "op": out.pop("op"), "bn_folded": self.bn_folded, **out}


@dataclass
class ResidualQuantRecord:
    """A trained standalone activation quantizer written as exact Q/DQ: a residual Add's input (add_quant /
    id_quant) or the global pool's input (the last Add's output, scheme pool=True)."""

    quantizer: str
    act: ActRecord

    def as_json(self) -> dict:
        return {"quantizer": self.quantizer, **self.act.as_json()}


@dataclass
class ResidualQdqRecord:
    """--residual-qdq: an Add that reads quantized tensors in place of float ones (TensorRT's placement)."""

    add: str
    quantized_inputs: list[str]

    def as_json(self) -> dict:
        return {"add": self.add, "quantized_inputs": self.quantized_inputs}

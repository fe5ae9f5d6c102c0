"""`qdg-deploy check MODEL.onnx --target tensorrt`: every violation of TensorRT's explicit-quantization rules.

Rules: zero points 0 and int8 type; scales constant and positive; activation scales per-tensor; weight
(constant) DequantizeLinear per-channel only on axis 0; no Q/DQ between a Conv and its BatchNormalization.
A Conv/Gemm/MatMul without DequantizeLinear on its data or weight input is no violation: TensorRT's explicit
quantization runs it in high precision (a mixed-precision model: AlignQ's first conv and classifier,
`calibrate --keep-float`); `float_layers` lists them as notes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import QdgError

QDQ = ("QuantizeLinear", "DequantizeLinear")
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def has_qdq(model: onnx.ModelProto) -> bool:
    """Whether the graph is explicitly quantized (holds a QuantizeLinear or DequantizeLinear node): TensorRT 10
    then needs its INT8 flag (the engine builder and ort-trt alike)."""
    return any(n.op_type in QDQ for n in model.graph.node)


def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise QdgError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise QdgError(f"cannot read {path} as ONNX: {str(e).splitlines()[0]}") from None


def _plain_inputs(g: onnx.GraphProto):
    """(node, roles) per Conv/Gemm/MatMul: which of its data and weight inputs are not read through DequantizeLinear."""
    producer = {o: n for n in g.node for o in n.output}
    for n in g.node:
        if n.op_type in WEIGHTED:
            yield (
                n,
                [
                    role
                    for i, role in ((0, "data"), (1, "weight"))
                    if i < len(n.input) and getattr(producer.get(n.input[i]), "op_type", None) != "DequantizeLinear"
                ],
            )


def float_layers(model) -> list[str]:
    """A note per Conv/Gemm/MatMul that TensorRT will run in float: one of its data and weight inputs is not read
    through DequantizeLinear (AlignQ's first conv and classifier, `calibrate --keep-float` layers). Explicit
    quantization runs such a layer in high precision: legal, but not INT8, which is worth knowing."""
    return [
        f"{n.op_type} {n.name or n.output[0]!r} runs in float (no DequantizeLinear on its "
        f"{' and '.join(plain)} input{'s' if len(plain) > 1 else ''})"
        for n, plain in _plain_inputs(_load(model).graph)
        if plain
    ]


def quantized_layers(model) -> list[tuple[str, str]]:
    """(op type, node name) of each Conv/Gemm/MatMul with DequantizeLinear on both its data and weight inputs:
    the layers TensorRT should run in INT8."""
    return [(n.op_type, n.name or n.output[0]) for n, plain in _plain_inputs(_load(model).graph) if not plain]


def check_tensorrt_rules(model) -> list[str]:
    """One line per violation; empty when the graph follows the rules."""
    g = _load(model).graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    producer = {o: n for n in g.node for o in n.output}
    out = []

    def attr(n, name, default):
        for a in n.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    for n in g.node:
        if n.op_type not in QDQ:
            continue
        what = f"{n.op_type} {n.name or n.output[0]!r}"
        scale_name = n.input[1] if len(n.input) > 1 else ""
        scale = consts.get(scale_name)
        if scale is None:
            out.append(f"{what}: scale {scale_name!r} is not a constant")
        elif not (np.asarray(scale) > 0).all():
            out.append(f"{what}: scale has non-positive values")
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if len(n.input) > 2 and n.input[2] and zp is None:
            out.append(f"{what}: zero point {n.input[2]!r} is not a constant")
        if zp is not None and np.any(np.asarray(zp) != 0):
            out.append(f"{what}: non-zero zero point {np.unique(zp)[:4].tolist()}")
        if zp is not None and zp.dtype != np.int8:
            out.append(f"{what}: type {zp.dtype} (TensorRT takes int8 Q/DQ for activations and weights)")
        is_weight = n.op_type == "DequantizeLinear" and n.input[0] in consts
        per_axis = scale is not None and np.asarray(scale).size > 1
        if per_axis and not is_weight:
            out.append(f"{what}: per-axis activation scale ({np.asarray(scale).size} values)")
        if per_axis and is_weight and attr(n, "axis", 1) != 0:
            out.append(f"{what}: weight quantization axis {attr(n, 'axis', 1)} (TensorRT needs axis 0)")
    for n in g.node:
        if n.op_type == "BatchNormalization":
            src = producer.get(n.input[0])
            if src is not None and src.op_type in QDQ:
                chain = src
                while chain is not None and chain.op_type in QDQ:
                    chain = producer.get(chain.input[0])
                if chain is not None and chain.op_type in WEIGHTED:
                    out.append(
                        f"BatchNormalization {n.name or n.output[0]!r}: Q/DQ between {chain.op_type} "
                        f"{chain.name!r} and the BatchNormalization (fold BN first)"
                    )
    return out

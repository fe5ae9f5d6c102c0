"""`export_onnx` (a model) and `export_run` (a run directory, with verification and the .export.json report)."""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import onnx
from torch import nn

from ..errors import QdgError
from ..io import atomic_path, write_json
from ..quant import QConv2d, QLinear
from .onnx_writer import DEFAULT_OPSET, build_onnx
from .verify import ort_session, verify_model, verify_sets

FORMATS = ("onnx", "onnx-fp32", "tensorrt")
FUSED_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd"}
WEIGHT_ONLY_NOTE = ("weight-only layers: integer codes + DequantizeLinear into a float Conv; they shrink the file "
                    "but compute in float (TensorRT runs a convolution in INT8 only when its input is quantized too)")
# (the writer's bias label starts with, report key stem, note)
BIAS_NOTES = (
    ("on the int32 grid", "int32_grid_bias",
     "trained with integer biases (scheme int_bias): each bias already sits on the int32 grid s_x·s_w in the torch "
     "model's eval mode, so ONNX Runtime's QLinearConv holds it exactly"),
)

SNAPPED_NOTE = ("each of these layers' output is snapped to its integer accumulator (Conv, then Div/Round/Mul by the "
                "float32 unit s_x·s_w, then the folded bias), in the graph and in the torch model's eval forward: "
                "both hold the same float32 values whatever order their kernels sum in (quant/exact.py)")
ORT_KERNEL_NOTE = ("ONNX Runtime CPU runs these layers as integer kernels into the next quantizer (QLinearConv / "
                   "QGemm), and the torch model's eval forward computes what those kernels compute (int32 sum, "
                   "float32 requantization; residual Adds as QLinearAdd), measured bit for bit against ORT 1.32's "
                   "x86 kernels on a CPU with VNNI (AVX2 without VNNI can saturate int16 pair sums)")


def float_copy(model: nn.Module) -> nn.Module:
    """The same network with every quantizer removed (the float baseline)."""
    m = copy.deepcopy(model)
    for layer in m.modules():
        if isinstance(layer, (QConv2d, QLinear)):
            layer.weight_quant = None
            layer.act_quant = None
    return m.eval()


def report_name(path: Path) -> Path:
    """model.onnx -> model.export.json"""
    return path.with_name(path.stem + ".export.json")


def save_onnx(proto: onnx.ModelProto, path: Path) -> int:
    data = proto.SerializeToString()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def packed_bytes(proto: onnx.ModelProto, weight_bits: dict[str, int]) -> int:
    """Bytes a b-bit deployment needs: quantized weights' codes packed at their trained bit-width, plus every
    other initializer as stored (scales, biases, float weights, activation zero points); weight zero points
    are all 0 and need no storage."""
    total = 0
    for t in proto.graph.initializer:
        arr = onnx.numpy_helper.to_array(t)
        if t.name in weight_bits:
            total += math.ceil(arr.size * weight_bits[t.name] / 8)
        elif not t.name.endswith(".weight_zero_point"):
            total += arr.nbytes
    return total


def ort_fusion(proto: onnx.ModelProto, layers: list[dict]) -> dict:
    """Which quantized layers ONNX Runtime CPU turns into integer kernels (QLinearConv, QGemm, ...)."""
    with tempfile.TemporaryDirectory() as d:
        opt = Path(d) / "opt.onnx"
        ort_session(proto, level="extended", optimized_path=str(opt))
        g = onnx.load(str(opt), load_external_data=False).graph
    fused_refs = set()
    for n in g.node:
        if n.op_type in FUSED_OPS:
            fused_refs.update([n.name, *n.input])
    adds = sum(n.op_type == "QLinearAdd" for n in g.node)
    fused, unfused = [], []
    for e in layers:
        name = e["layer"]
        # the layer's own weight codes or node name (a fused node also reads the next layer's Q scale)
        hit = any(r.startswith((f"{name}.weight_q", f"{name}.conv", f"{name}.gemm")) for r in fused_refs)
        (fused if hit else unfused).append(name)
    return {"ort_fused_layers": fused, "ort_unfused_layers": unfused, "ort_fused_adds": adds}


def export_onnx(model: nn.Module, input_shape, path: str | Path, *, target: str = "ort", opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = True, fp32: bool = False, residual_qdq: bool | None = None,
                int_bias: bool | None = None) -> dict:
    """Write the model's QDQ ONNX (or, with fp32=True, the float network with BN folded) to `path`.

    Returns the writer's info plus file_bytes, fp32_bytes (the float network's ONNX), packed_bytes and which
    layers ONNX Runtime fuses into integer kernels. The onnx proto is under the key "proto".
    """
    path = Path(path)
    proto, info = build_onnx(model, input_shape, target=target, opset=opset, dynamic_batch=dynamic_batch,
                             fp32=fp32, residual_qdq=residual_qdq, int_bias=int_bias)
    info["file_bytes"] = save_onnx(proto, path)
    if fp32:
        info["fp32_bytes"] = info["file_bytes"]
    else:
        fproto, _ = build_onnx(model, input_shape, target=target, opset=opset, dynamic_batch=dynamic_batch, fp32=True)
        info["fp32_bytes"] = len(fproto.SerializeToString())
    info["packed_bytes"] = packed_bytes(proto, info["weight_bits"])
    info["size_ratio"] = round(info["file_bytes"] / info["fp32_bytes"], 4)
    info["packed_ratio"] = round(info["packed_bytes"] / info["fp32_bytes"], 4)
    if not fp32:
        info.update(ort_fusion(proto, info["layers"]))
        if target == "ort" and info["int_bias"]:  # residual Adds the model computes as QLinearAdd (quant/exact.py)
            info["ort_kernel_adds"] = sum(getattr(m, "add_fused", None) is not None for m in model.modules())
    info["proto"] = proto
    return info


def _bits(scheme) -> tuple[int, int]:
    if scheme is None:
        return 32, 32
    return scheme.weight.bits, scheme.act.bits if scheme.act else 32


def export_run(run_dir: str | Path, *, fmt: str = "onnx", target: str = "ort", out: str | Path | None = None,
               opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, verify: bool = True,
               residual_qdq: bool | None = None, int_bias: bool | None = None, max_samples: int | None = None,
               console=None) -> dict:
    """Export a run directory's selected model; writes PATH and PATH's .export.json report; returns the report."""
    from ..runs import load_run

    if fmt not in FORMATS:
        raise QdgError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "tensorrt":
        from .tensorrt import require_tensorrt
        require_tensorrt()
        target = "tensorrt"
    run = load_run(run_dir)
    fp32 = fmt == "onnx-fp32"
    default_name = {"onnx": "model.onnx", "onnx-fp32": "model.fp32.onnx", "tensorrt": "model.onnx"}[fmt]
    path = Path(out) if out and fmt != "tensorrt" else Path(run_dir) / default_name
    scheme = run.scheme
    if scheme is None and not fp32:
        raise QdgError(f"{run_dir} holds a float model (no quantization scheme): use --format onnx-fp32")
    model = float_copy(run.model) if fp32 else run.model
    shape = run.config["model"]["input_shape"]
    info = export_onnx(model, shape, path, target=target, opset=opset, dynamic_batch=dynamic_batch, fp32=fp32,
                       residual_qdq=residual_qdq, int_bias=int_bias)
    proto = info.pop("proto")
    bits, act_bits = (32, 32) if fp32 else _bits(scheme)
    report = {"run": str(run_dir), "path": str(path), "format": fmt, "target": target,
              "scheme": None if fp32 else scheme.name, "arch": run.config["model"]["arch"],
              "bits": bits, "act_bits": act_bits, "opset": opset, "dynamic_batch": dynamic_batch,
              "int_bias": info.get("int_bias") if target == "ort" and not fp32 else None,
              "file_bytes": info["file_bytes"], "fp32_bytes": info["fp32_bytes"], "packed_bytes": info["packed_bytes"],
              "size_ratio": info["size_ratio"], "packed_ratio": info["packed_ratio"]}
    report.update(_graph_notes(info))
    from ..ensemble import export_note
    if (note := export_note(run, report)) is not None:  # an ensemble run: K and the per-member sizes
        report["ensemble"] = note
    if verify:
        report.update(verify_model(model, proto, info["probes"], verify_sets(run, max_samples), console=console))
    if fmt == "tensorrt":
        from .tensorrt import build_engine
        engine = Path(out) if out else Path(run_dir) / "model.engine"
        report["engine"] = str(engine)
        report["engine_bytes"] = build_engine(path, engine, shape, dynamic_batch=dynamic_batch)
    write_json(report_name(Path(report.get("engine", path))), report)
    return report


def _graph_notes(info: dict) -> dict:
    layers = info["layers"]
    notes = {"layers": layers,
             "clipped": [{"layer": e["layer"], "clip": e["act"]["clip"]} for e in layers if "clip" in e.get("act", {})],
             "requantized": [{"layer": e["layer"], "how": e["act"]["requantized"]}
                             for e in layers if "requantized" in e.get("act", {})],
             "weight_only_layers": [e["layer"] for e in layers if e.get("weight_only")],
             "bn_folded": [e["bn_folded"] for e in layers if e.get("bn_folded")],
             "residual_qdq": info["residual_qdq"],
             "residual_quantizers": [{k: e[k] for k in ("quantizer", "type", "zero_point", "exact", "shared")
                                      if k in e} for e in info.get("residual_quantizers", [])]}
    if notes["residual_quantizers"]:
        notes["residual_quantizers_note"] = ("the model trained quantizers on its residual Adds' inputs (scheme "
                                             "residual=True): their Q/DQ reproduce the torch model, so ONNX Runtime "
                                             "and TensorRT run those Adds and the convs feeding them as integer kernels")
    if notes["weight_only_layers"]:
        notes["weight_only_note"] = WEIGHT_ONLY_NOTE
    if notes["requantized"]:
        notes["requantized_note"] = ("TensorRT takes zero point 0 only: these activation quantizers were requantized "
                                     "to symmetric int8, so this export is not exact; see the measured agreement")
    for prefix, key, note in BIAS_NOTES:  # which layers' biases an integer kernel holds, and whether exactly
        named = [e["layer"] for e in layers if str(e.get("bias")).startswith(prefix)]
        if named:
            notes[f"{key}_layers"], notes[f"{key}_note"] = named, note
    if notes["residual_qdq"]:
        notes["residual_qdq_note"] = ("TensorRT placement: residual Adds take the block input's quantized tensor "
                                      "(the one its first conv reads); the torch model adds the float tensor, so "
                                      "this changes the numerics; see the measured agreement")
    for k in ("ort_fused_layers", "ort_unfused_layers"):
        if k in info:
            notes[k] = info[k]
    snapped = [e["layer"] for e in layers if str(e.get("exact", "")).startswith("integer accumulator")]
    kernels = [e["layer"] for e in layers if str(e.get("exact", "")).startswith("computes as ORT")]
    if snapped:
        notes["snapped_layers"], notes["snapped_note"] = snapped, SNAPPED_NOTE
    if kernels:
        notes["ort_kernel_layers"], notes["ort_kernel_note"] = kernels, ORT_KERNEL_NOTE
        missing = sorted(set(kernels) - set(info.get("ort_fused_layers", kernels)))
        if info.get("ort_kernel_adds", 0) > info.get("ort_fused_adds", 0):
            missing.append(f"{info['ort_kernel_adds'] - info['ort_fused_adds']} residual Add(s)")
        if missing:  # the model computes these as integer kernels, but this ORT build runs them otherwise
            notes["ort_kernel_mismatch"] = missing
    return notes

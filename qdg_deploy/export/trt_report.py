"""The engine report (`model.engine.json`): TensorRT's engine inspector JSON read into per-layer precision and
tactic, the quantized layers that did not run in INT8, and the report's schema. Pure: tested without TensorRT.

The inspector's format (TensorRT developer guide, "Engine Inspector"; 10.x → 11.x migration guide, "IEngineInspector
JSON Output"): `get_engine_information(LayerInformationFormat.JSON)` returns {"Layers": [...], "Bindings": [...]}
(11.x: "I/O Tensors" objects instead of "Bindings"). With ProfilingVerbosity.DETAILED each layer is an object with
"Name", "LayerType", "Inputs"/"Outputs" (each {"Name", "Location", "Dimensions", "Format/Datatype"}; 11.x splits
the last into "Format" and "DataType"), "TacticName" and, from the ONNX parser, "Metadata" naming the ONNX nodes
("[ONNX Layer: NAME]" or, inside ONNX local functions, "[ONNX Layer: NAME | FUNCTION ...]", several joined by
\\x1f when TensorRT fused them); fused layers' names join the parts
with " + ". With less verbosity a layer is only its name.
"""

from __future__ import annotations

import json
import re

PRECISIONS = (
    ("INT8", ("int8",)),
    ("FP8", ("fp8",)),
    ("FP16", ("fp16", "half")),
    ("BF16", ("bf16",)),
    ("FP32", ("fp32", "float")),
    ("INT32", ("int32",)),
)


def tensor_precision(t: dict) -> str | None:
    """INT8 / FP16 / FP32 ... of one inspector tensor entry (either JSON layout), else None."""
    text = str(t.get("DataType") or t.get("Format/Datatype") or "").lower()
    for name, keys in PRECISIONS:
        if any(re.search(rf"\b{k}\b", text) for k in keys):
            return name
    return None


def onnx_names(layer: dict) -> list[str]:
    """The ONNX node names a TensorRT layer came from: its metadata, else the parts of its (fused) name."""
    meta = str(layer.get("Metadata") or "")
    found = [m.split(" | ")[0].strip() for m in re.findall(r"\[ONNX Layer: ([^\]]+)\]", meta)]
    return found or [p.strip() for p in str(layer.get("Name", "")).split(" + ") if p.strip()]


def parse_layers(info: str | dict) -> list[dict]:
    """[{name, type, precision, input_formats, tactic, onnx}] from the inspector's JSON."""
    data = json.loads(info) if isinstance(info, str) else info
    rows: list[dict] = []
    for layer in data.get("Layers", []):
        if isinstance(layer, str):  # ProfilingVerbosity below DETAILED: names only
            rows.append(
                {
                    "name": layer,
                    "type": None,
                    "precision": None,
                    "input_formats": [],
                    "tactic": None,
                    "onnx": onnx_names({"Name": layer}),
                }
            )
            continue
        ins = [t for t in layer.get("Inputs", []) if isinstance(t, dict)]
        precision = next((p for p in map(tensor_precision, ins) if p), None)
        rows.append(
            {
                "name": layer.get("Name"),
                "type": layer.get("LayerType"),
                "precision": precision,
                "input_formats": [t.get("Format/Datatype") or t.get("DataType") for t in ins],
                "tactic": layer.get("TacticName") or layer.get("TacticValue"),
                "onnx": onnx_names(layer),
            }
        )
    return rows


def not_int8(quantized: list[tuple[str, str]], layers: list[dict]) -> list[dict]:
    """Each (op, ONNX node name) that had Q/DQ in the ONNX but whose TensorRT layer did not run in INT8:
    {onnx_node, op, layer, precision, reason}. A node found in no layer is listed with that reason."""
    by_node: dict[str, dict] = {}
    row: dict | None
    for row in layers:
        for name in row["onnx"]:
            by_node.setdefault(name, row)
    out = []
    for op, node in quantized:
        row = by_node.get(node)
        if row is None:
            out.append(
                {
                    "onnx_node": node,
                    "op": op,
                    "layer": None,
                    "precision": None,
                    "reason": "no engine layer names this node (profiling verbosity too low, or renamed)",
                }
            )
        elif row["precision"] != "INT8":
            fmt = "; ".join(str(f) for f in row["input_formats"] if f)
            out.append(
                {
                    "onnx_node": node,
                    "op": op,
                    "layer": row["name"],
                    "precision": row["precision"],
                    "reason": f"input format: {fmt}" if fmt else None,
                }
            )
    return out


# The report's keys and their types: what `model.engine.json` holds (tests check a built report against it).
REPORT_SCHEMA = {
    "engine": str,
    "onnx": str,
    "engine_bytes": int,
    "tensorrt": str,
    "gpu": dict,
    "plan": dict,
    "profiles": list,
    "precision": dict,
    "workspace_gb": (int, float),
    "builder_optimization_level": (int, type(None)),
    "timing_cache": (str, type(None)),
    "build_seconds": (int, float),
    "fp16_conversion": (dict, type(None)),
    "layers": list,
    "layer_precisions": dict,
    "quantized_layers": int,
    "not_int8": list,
    "float_layers": list,
}
GPU_SCHEMA = {"name": str, "compute_capability": str}
PROFILE_SCHEMA = {"input": str, "min": list, "opt": list, "max": list}
LAYER_SCHEMA = {
    "name": (str, type(None)),
    "type": (str, type(None)),
    "precision": (str, type(None)),
    "input_formats": list,
    "tactic": (str, type(None)),
    "onnx": list,
}


def schema_errors(report: dict) -> list[str]:
    """Every key of REPORT_SCHEMA (and of its nested parts) that is missing or of the wrong type."""
    errs = []

    def check(obj, schema, where):
        for key, typ in schema.items():
            if key not in obj:
                errs.append(f"{where}{key}: missing")
            elif not isinstance(obj[key], typ) or (typ is int and isinstance(obj[key], bool)):
                errs.append(f"{where}{key}: {type(obj[key]).__name__}")

    check(report, REPORT_SCHEMA, "")
    if isinstance(report.get("gpu"), dict):
        check(report["gpu"], GPU_SCHEMA, "gpu.")
    for i, p in enumerate(report.get("profiles") or []):
        check(p, PROFILE_SCHEMA, f"profiles[{i}].")
    for i, row in enumerate(report.get("layers") or []):
        check(row, LAYER_SCHEMA, f"layers[{i}].")
    return errs


def engine_report(
    *,
    engine: str,
    onnx: str,
    engine_bytes: int,
    plan: dict,
    gpu: dict,
    profiles: list,
    workspace_gb: float,
    opt_level: int | None,
    timing_cache: str | None,
    build_seconds: float,
    fp16_conversion: dict | None,
    inspector_json: str | dict,
    quantized: list[tuple[str, str]],
    float_notes: list[str],
) -> dict:
    """The report dict from what a build knows (TensorRT-free: the builder passes plain values)."""
    layers = parse_layers(inspector_json)
    counts: dict[str, int] = {}
    for row in layers:
        counts[str(row["precision"])] = counts.get(str(row["precision"]), 0) + 1
    flags = set(plan["builder_flags"])
    precision = {
        "strongly_typed": plan["strongly_typed"],
        "int8_flag": "INT8" in flags,
        "fp16_flag": "FP16" in flags,
        "fp16_remainder": plan["convert_fp16"] or "FP16" in flags,
        "device": plan["device"],
        "gpu_fallback": "GPU_FALLBACK" in flags,
    }
    return {
        "engine": engine,
        "onnx": onnx,
        "engine_bytes": engine_bytes,
        "tensorrt": plan["tensorrt"],
        "gpu": gpu,
        "plan": plan,
        "profiles": profiles,
        "precision": precision,
        "workspace_gb": workspace_gb,
        "builder_optimization_level": opt_level,
        "timing_cache": timing_cache,
        "build_seconds": round(build_seconds, 3),
        "fp16_conversion": fp16_conversion,
        "layers": layers,
        "layer_precisions": counts,
        "quantized_layers": len(quantized),
        "not_int8": not_int8(quantized, layers),
        "float_layers": float_notes,
    }

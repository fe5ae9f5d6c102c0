"""Exact QDQ ONNX export of quantized models, verified against PyTorch; TensorRT rule checks and engines."""

from ..ort_session import ort_session
from .api import (
    DEFAULT_MIN_AGREEMENT,
    FORMATS,
    Exported,
    ExportPlan,
    check_agreement,
    compare_step,
    export_onnx,
    export_run_dir,
    export_step,
    packed_bytes,
    plan_export,
    report_name,
    verify_step,
    write_onnx,
)
from .check import check_tensorrt_rules, float_layers
from .graph_builder import GraphBuilder, Settings
from .onnx_writer import DEFAULT_OPSET, TARGETS, LoweredGraph, lower_to_onnx
from .records import ActRecord, Bias, LayerRecord, Lowered, ResidualQdqRecord, ResidualQuantRecord
from .report import ExportReport
from .verify import compare, layer_divergence, verify_model

__all__ = [
    "ActRecord",
    "Bias",
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_OPSET",
    "ExportPlan",
    "ExportReport",
    "Exported",
    "FORMATS",
    "GraphBuilder",
    "LayerRecord",
    "Lowered",
    "LoweredGraph",
    "ResidualQdqRecord",
    "ResidualQuantRecord",
    "Settings",
    "TARGETS",
    "check_agreement",
    "check_tensorrt_rules",
    "compare",
    "compare_step",
    "export_step",
    "float_layers",
    "write_onnx",
    "export_onnx",
    "export_run_dir",
    "layer_divergence",
    "lower_to_onnx",
    "ort_session",
    "packed_bytes",
    "plan_export",
    "report_name",
    "verify_model",
    "verify_step",
]

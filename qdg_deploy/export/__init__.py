"""Exact QDQ ONNX export of quantized models, verified against PyTorch; TensorRT rule checks and engines."""

from .api import FORMATS, export_onnx, export_run, packed_bytes, report_name
from .check import check_tensorrt_rules
from .onnx_writer import DEFAULT_OPSET, TARGETS, build_onnx
from ..ort_session import ort_session
from .verify import compare, layer_divergence, verify_model

__all__ = ["DEFAULT_OPSET", "FORMATS", "TARGETS", "build_onnx", "check_tensorrt_rules", "compare", "export_onnx",
           "export_run", "layer_divergence", "ort_session", "packed_bytes", "report_name", "verify_model"]

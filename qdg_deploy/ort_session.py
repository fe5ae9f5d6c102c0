"""The one place that opens ONNX Runtime sessions (export verify, the fusion report, bench's ORT runtimes)."""

from __future__ import annotations

from pathlib import Path

import onnx

LEVELS = ("all", "extended", "basic", "none")


def ort_session(model: onnx.ModelProto | bytes | str | Path, threads: int = 1, level: str = "all",
                optimized_path: str | None = None, providers: list[str] | None = None):
    """An InferenceSession on `model` (a proto, its bytes or a file) with `threads` intra-op threads (0: ORT's
    default), one inter-op thread, graph optimizations at `level`, warnings off; CPU unless `providers`."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    data = str(data) if isinstance(data, Path) else data
    return ort.InferenceSession(data, so, providers=providers or ["CPUExecutionProvider"])

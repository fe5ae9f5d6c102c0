"""The one place that opens ONNX Runtime sessions (export verify, the fusion report, bench's ORT runtimes)."""

from __future__ import annotations

from pathlib import Path

import onnx

LEVELS = ("all", "extended", "basic", "none")


def ort_session(
    model: onnx.ModelProto | bytes | str | Path,
    threads: int = 1,
    level: str = "all",
    optimized_path: str | None = None,
    providers: list[str] | None = None,
):
    """An InferenceSession on `model` (a proto, its bytes or a file) with `threads` intra-op threads (0: ORT's
    default), one inter-op thread, graph optimizations at `level`, warnings off; CPU unless `providers`."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    data = str(data) if isinstance(data, Path) else data
    try:
        return ort.InferenceSession(data, so, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # a runtime that cannot load a model: an expected failure, named in one line
        from .errors import QdgError

        what = data if isinstance(data, str) else "the model"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise QdgError(f"ONNX Runtime {ort.__version__} cannot load {what}: {first}") from None


_MAX_OPSET: list[int] = []


def ort_max_opset() -> int:
    """The newest default-domain opset whose QuantizeLinear/DequantizeLinear this ONNX Runtime implements (and this
    onnx package writes), found by loading a two-node Q/DQ model at each opset from the newest down (milliseconds;
    once per process)."""
    if not _MAX_OPSET:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        so = ort.SessionOptions()
        so.log_severity_level = 4
        found = 0
        for opset in range(onnx.defs.onnx_opset_version(), 0, -1):
            ids = [helper.make_opsetid("", opset)]
            x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
            y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
            consts = [
                helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
                helper.make_tensor("z", TensorProto.UINT8, [], [0]),
            ]
            nodes = [
                helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
            ]
            graph = helper.make_graph(nodes, "probe", [x], [y], initializer=consts)
            model = helper.make_model(graph, opset_imports=ids, ir_version=helper.find_min_ir_version_for(ids))
            try:
                ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            except Exception:
                continue
            found = opset
            break
        _MAX_OPSET.append(found)
    return _MAX_OPSET[0]

"""`--format tensorrt`: build a TensorRT engine from the exported QDQ ONNX with TensorRT's Python API.

Not testable on a machine without TensorRT and a GPU; `require_tensorrt` makes that a clear error.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import QdgError
from ..io import atomic_path


def require_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise QdgError("TensorRT is not installed (pip install tensorrt on a machine with an NVIDIA GPU); "
                       "use --format onnx --target tensorrt and build the engine where TensorRT runs") from None
    return trt


def build_engine(onnx_path: str | Path, engine_path: str | Path, input_shape, *, dynamic_batch: bool = True,
                 max_batch: int = 64, workspace_gib: float = 2.0) -> int:
    """Parse the ONNX, build a serialized engine (explicit quantization from the Q/DQ nodes), write it; returns bytes."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    strongly_typed = major >= 11  # TensorRT 11: precisions come from the ONNX types; no precision flags
    flags = 0
    if strongly_typed:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif major < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise QdgError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not strongly_typed:
        config.set_flag(trt.BuilderFlag.INT8)  # TensorRT 8-10: Q/DQ layers run in INT8 only with this flag
    if dynamic_batch:
        profile = builder.create_optimization_profile()
        name = network.get_input(0).name
        shape = tuple(input_shape)
        profile.set_shape(name, (1, *shape), (max(1, max_batch // 2), *shape), (max_batch, *shape))
        config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise QdgError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    data = bytes(blob)
    with atomic_path(engine_path) as tmp:
        Path(tmp).write_bytes(data)
    return len(data)

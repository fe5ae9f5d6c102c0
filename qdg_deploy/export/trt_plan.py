"""What a TensorRT build does, decided from the installed version string alone (pure: tested without TensorRT).

TensorRT 10.x (weakly typed): Q/DQ layers run in INT8 only with BuilderFlag.INT8 set; BuilderFlag.FP16 lets the
float remainder (layers without Q/DQ) pick FP16 kernels; networks are always explicit batch (the EXPLICIT_BATCH
creation flag is deprecated and ignored since 10.0, so none is passed).
TensorRT 11.x (strongly typed, always): BuilderFlag.INT8/FP16 are removed and the STRONGLY_TYPED creation flag is
deprecated and ignored; precisions come from the ONNX types, so `--fp16` converts the graph's float remainder to
float16 first (export/fp16.py) and nothing else changes. Sources: TensorRT Python API docs, Builder page
(NetworkDefinitionCreationFlag, 10.x and 11.0.0), and "Migrating from TensorRT 10.x to 11.x", removed Python APIs.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ..errors import QdgError

SUPPORTED_MAJORS = (10, 11)
DEFAULT_BATCH_RANGE = "1,8,32"  # MIN,OPT,MAX batch of a dynamic batch's profile (bench's default batches)

# Each TensorRT Python call the builder (export/tensorrt.py) and the `trt` runtime (bench/runtime_trt.py) make, and
# the majors it exists in, checked against the 10.x and 11.x Python API references and the 10.x → 11.x migration
# guide's removed-API list:
#   10 and 11: Logger, Builder, Builder.create_network(0), OnnxParser(network, logger).parse/num_errors/get_error,
#     Builder.create_builder_config/create_optimization_profile/build_serialized_network,
#     IOptimizationProfile.set_shape, IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...),
#     .add_optimization_profile, .create_timing_cache/.set_timing_cache(cache, ignore_mismatch)/.get_timing_cache,
#     ITimingCache.serialize, .builder_optimization_level, .profiling_verbosity = ProfilingVerbosity.DETAILED,
#     .default_device_type = DeviceType.DLA, .DLA_core, set_flag(BuilderFlag.GPU_FALLBACK),
#     Runtime.deserialize_cuda_engine, ICudaEngine.create_engine_inspector,
#     EngineInspector.get_engine_information(LayerInformationFormat.JSON), ICudaEngine.num_io_tensors/
#     get_tensor_name/get_tensor_mode/get_tensor_dtype/get_tensor_shape/get_tensor_profile_shape/
#     create_execution_context, IExecutionContext.set_input_shape/get_tensor_shape/set_tensor_address/
#     execute_async_v3(stream)
#   10 only (removed in 11): set_flag(BuilderFlag.INT8), set_flag(BuilderFlag.FP16)


def parse_version(version: str) -> tuple[int, int, int]:
    """'10.7.0' / '10.7.0.post1' / '11.0.0.12' → (10, 7, 0)."""
    m = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(version))
    if not m:
        raise QdgError(f"cannot read TensorRT version {version!r}")
    return tuple(int(g or 0) for g in m.groups())  # type: ignore[return-value]


@dataclass(frozen=True)
class BuildPlan:
    tensorrt: str
    major: int
    strongly_typed: bool
    builder_flags: tuple[str, ...]  # BuilderFlag names set on the config
    convert_fp16: bool  # the ONNX's float remainder converted to float16 before parsing
    device: str  # "GPU" or "DLA"

    def to_dict(self) -> dict:
        return asdict(self)


def build_plan(
    version: str, *, has_qdq: bool, fp16: bool, dla_core: int | None = None, gpu_fallback: bool = False
) -> BuildPlan:
    """The builder flags and graph rewrite for this TensorRT version and these options."""
    major = parse_version(version)[0]
    if major not in SUPPORTED_MAJORS:
        raise QdgError(
            f"TensorRT {version} is not supported: the engine builder knows TensorRT 10.x and 11.x "
            f"(pip install 'tensorrt-cu12>=10,<12')"
        )
    flags: list[str] = []
    strongly_typed = major >= 11
    if not strongly_typed:
        if has_qdq:
            flags.append("INT8")
        if fp16 or dla_core is not None:  # DLA runs FP16 and INT8 only: its float layers need the FP16 flag
            flags.append("FP16")
    if dla_core is not None and gpu_fallback:
        flags.append("GPU_FALLBACK")
    return BuildPlan(
        tensorrt=str(version),
        major=major,
        strongly_typed=strongly_typed,
        builder_flags=tuple(flags),
        convert_fp16=strongly_typed and (fp16 or dla_core is not None),
        device="GPU" if dla_core is None else "DLA",
    )


def parse_batch_range(text: str) -> tuple[int, int, int]:
    """'1,8,32' → (min, opt, max) batch of the optimization profile; one number N means N,N,N."""
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3 or not 1 <= vals[0] <= vals[1] <= vals[2]:
        raise QdgError(f"--batch-range takes MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, e.g. 1,8,32 (got {text!r})")
    return vals[0], vals[1], vals[2]


def profile_batches(input_batch: int, batch_range: str | None) -> tuple[int, int, int]:
    """(min, opt, max) batch of the optimization profile for an input whose batch dimension is `input_batch`
    (<= 0: dynamic). A fixed batch b takes (b, b, b): TensorRT refuses any other profile for a static dimension,
    so a --batch-range that disagrees is refused; a dynamic batch takes --batch-range (default 1,8,32)."""
    if input_batch <= 0:
        return parse_batch_range(batch_range or DEFAULT_BATCH_RANGE)
    fixed = (input_batch,) * 3
    if batch_range is not None and parse_batch_range(batch_range) != fixed:
        raise QdgError(
            f"--batch-range {batch_range} disagrees with the ONNX input's fixed batch {input_batch} "
            f"(--static-batch exports batch 1): leave --batch-range out, or export with --dynamic-batch"
        )
    return fixed


def profile_shapes(name: str, dims: list[int], batch_range: str | None) -> dict:
    """The optimization profile of one network input of shape `dims` (-1: dynamic): {input, min, opt, max}."""
    chw = [int(d) for d in dims[1:]]
    if any(d <= 0 for d in chw):
        raise QdgError(
            f"input {name!r} has a dynamic dimension besides the batch {list(dims)}: export with "
            f"fixed C, H, W (--batch-range sets the batch only)"
        )
    lo, mid, hi = profile_batches(int(dims[0]), batch_range)
    return {"input": name, "min": [lo, *chw], "opt": [mid, *chw], "max": [hi, *chw]}

"""`export --format tensorrt`: build `model.engine` and `model.engine.json` from a QDQ ONNX with TensorRT's Python API.

One function builds on TensorRT 10.x and 11.x; what differs is decided by `trt_plan.build_plan` from the version
string (tested without TensorRT). Every TensorRT call made here is listed in a comment in `trt_plan.py` with the
majors it exists in. No TensorRT runs on the project's test machines: `require_tensorrt` makes that one clear error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import QdgError
from ..io import atomic_path, writable_folder, write_json
from .check import float_layers, has_qdq, quantized_layers
from .fp16 import convert_float_remainder
from .trt_plan import build_plan, parse_batch_range, profile_shapes
from .trt_report import engine_report

INSTALL = (
    "pip install 'tensorrt-cu12>=10,<12' (or tensorrt-cu13) on a machine with an NVIDIA GPU; on a Jetson "
    "use JetPack's TensorRT; or export --format onnx --target tensorrt and build the engine where TensorRT runs"
)


def require_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise QdgError(f"TensorRT is not installed (the tensorrt Python package is missing): {INSTALL}") from None
    return trt


@dataclass
class TrtOptions:
    fp16: bool = True
    batch_range: str | None = None  # None: 1,8,32 for a dynamic batch, the input's own for a fixed one
    workspace_gb: float = 2.0
    timing_cache: str | None = None
    opt_level: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    strict_int8: bool = False

    def check(self) -> None:
        """Bad values refused before any work (exit 2, nothing written)."""
        if self.batch_range is not None:
            parse_batch_range(self.batch_range)
        if not self.workspace_gb > 0:
            raise QdgError(f"--workspace-gb takes a positive number of GiB (got {self.workspace_gb})")
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise QdgError(f"--builder-opt-level takes 0..5 (got {self.opt_level})")
        if self.dla_core is not None and self.dla_core < 0:
            raise QdgError(f"--dla-core takes a core index >= 0 (got {self.dla_core})")
        if self.gpu_fallback and self.dla_core is None:
            raise QdgError("--gpu-fallback needs --dla-core N (layers the DLA cannot run fall back to the GPU)")
        if self.timing_cache and (blocked := writable_folder(self.timing_cache)) is not None:
            raise QdgError(
                f"--timing-cache {self.timing_cache}: cannot write in {blocked} (read-only, not permitted "
                f"or not a folder); choose another path"
            )


def require_gpu(trt_device_index: int = 0) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise QdgError(f"TensorRT is installed but torch sees no CUDA GPU; {INSTALL}")
    major, minor = torch.cuda.get_device_capability(trt_device_index)
    return {"name": torch.cuda.get_device_name(trt_device_index), "compute_capability": f"{major}.{minor}"}


def _parse(trt, builder, logger, model: onnx.ModelProto, where: str):
    network = builder.create_network(0)  # explicit batch is the only mode in 10.x; strongly typed always in 11.x
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise QdgError(f"TensorRT cannot parse {where}: {errors}")
    return network, parser


def _config(trt, builder, network, plan, opts: TrtOptions, cache_blob: bytes | None):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer precision and tactic in the report
    if opts.opt_level is not None:
        config.builder_optimization_level = opts.opt_level
    if opts.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = opts.dla_core
    cache = config.create_timing_cache(cache_blob or b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profiles = []
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shapes = profile_shapes(t.name, [int(t.shape[j]) for j in range(len(t.shape))], opts.batch_range)
        profile.set_shape(t.name, *(tuple(shapes[k]) for k in ("min", "opt", "max")))
        profiles.append(shapes)
    config.add_optimization_profile(profile)
    return config, profiles


def engine_report_path(engine_path: Path) -> Path:
    """model.engine -> model.engine.json"""
    return engine_path.with_name(engine_path.name + ".json")


def build_engine(
    onnx_path: str | Path, engine_path: str | Path, opts: TrtOptions | None = None, onnx_label: str | None = None
) -> tuple[bytes, dict, bytes | None]:
    """(engine bytes, report, timing-cache bytes or None) built from the QDQ ONNX; writes nothing, so the caller
    commits every file together once all its work is done (`write_engine_files`).

    `engine_path`: the engine's name in the report; `onnx_label`: the ONNX's when `onnx_path` is a temporary file.
    With --strict-int8 a quantized Conv/Gemm that TensorRT did not run in INT8 refuses the engine."""
    opts = opts or TrtOptions()
    opts.check()
    trt = require_tensorrt()
    gpu = require_gpu()
    model = onnx.load(str(onnx_path))
    quantized, float_notes = quantized_layers(model), float_layers(model)
    plan = build_plan(
        trt.__version__, has_qdq=has_qdq(model), fp16=opts.fp16, dla_core=opts.dla_core, gpu_fallback=opts.gpu_fallback
    )
    conversion = None
    if plan.convert_fp16:  # TensorRT 11: FP16 comes from the graph's types
        model, conversion = convert_float_remainder(model)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, model, str(onnx_path))
    cache_path = Path(opts.timing_cache) if opts.timing_cache else None
    cache_blob = cache_path.read_bytes() if cache_path and cache_path.is_file() else None
    config, profiles = _config(trt, builder, network, plan, opts, cache_blob)
    t0 = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if blob is None:
        raise QdgError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} (see its log above)")
    data = bytes(blob)
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    # the ONNX by absolute name: bench's ort-trt matches it to the ONNX it runs, whatever bench's working directory
    report = engine_report(
        engine=str(engine_path),
        onnx=str(Path(onnx_label or onnx_path).resolve()),
        engine_bytes=len(data),
        plan=plan.to_dict(),
        gpu=gpu,
        profiles=profiles,
        workspace_gb=opts.workspace_gb,
        opt_level=opts.opt_level,
        timing_cache=str(cache_path) if cache_path else None,
        build_seconds=seconds,
        fp16_conversion=conversion,
        inspector_json=info,
        quantized=quantized,
        float_notes=float_notes,
    )
    if opts.strict_int8 and report["not_int8"]:
        first = report["not_int8"][0]
        raise QdgError(
            f"--strict-int8: {len(report['not_int8'])} quantized layer(s) did not run in INT8, first "
            f"{first['op']} {first['onnx_node']!r} ({first['precision'] or 'not found'}; "
            f"{first['reason'] or 'no reason given'}); {engine_path} not written"
        )
    # the timing cache grows with each build: later builds of similar layers are faster
    cache = bytes(config.get_timing_cache().serialize()) if cache_path else None
    return data, report, cache


def write_engine_files(
    engine_path: str | Path, built: tuple[bytes, dict, bytes | None], timing_cache: str | None
) -> None:
    """Write build_engine's result: the engine, its report and (given a path) the timing cache, each under a
    temporary name first, all renamed into place together at the end (the caller's last step)."""
    data, report, cache = built
    with atomic_path(engine_report_path(Path(engine_path))) as tmp_report, atomic_path(engine_path) as tmp:
        Path(tmp).write_bytes(data)
        write_json(tmp_report, report)
        if timing_cache and cache is not None:
            with atomic_path(timing_cache) as tmp_cache:
                Path(tmp_cache).write_bytes(cache)

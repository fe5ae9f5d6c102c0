"""`export_onnx` (a model) and `export_run_dir` (a run directory, with verification and the .export.json report)."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from ..device import resolve_device
from ..errors import QdgError
from ..io import atomic_path, writable_folder
from ..ort_session import ort_session
from ..quant import strip_quantizers
from ..quant.plan import add_plans, pool_plans
from .metadata import base_metadata, run_metadata, set_metadata
from .onnx_writer import DEFAULT_OPSET, LoweredGraph, lower_to_onnx
from .records import LayerRecord
from .report import ExportReport, OrtFusion, ensemble_note, graph_notes
from .variants import graph_comparison, ort_latency_ms, other_graph
from .verify import verify_model

FORMATS = ("onnx", "onnx-fp32", "tensorrt")
DEFAULT_MIN_AGREEMENT = 0.999  # top-1 agreement below which export refuses to write
FUSED_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd"}


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


def ort_fusion(
    proto: onnx.ModelProto, layers: list[LayerRecord], kernel_adds: int | None = None, kernel_pools: int | None = None
) -> OrtFusion:
    """Which quantized layers ONNX Runtime CPU turns into integer kernels (QLinearConv, QGemm, ...): a fused node
    reads the layer's weight codes or keeps its op's name (either may carry a suffix ORT adds)."""
    with tempfile.TemporaryDirectory() as d:
        opt = Path(d) / "opt.onnx"
        ort_session(proto, level="extended", optimized_path=str(opt))
        g = onnx.load(str(opt), load_external_data=False).graph
    fused_refs = set()
    for n in g.node:
        if n.op_type in FUSED_OPS:
            fused_refs.update([n.name, *n.input])
    fused: list[str] = []
    unfused: list[str] = []
    for r in layers:
        own = tuple(s for s in (r.weight_codes, r.op_node) if s)
        (fused if any(ref.startswith(own) for ref in fused_refs) else unfused).append(r.layer)
    count = lambda op: sum(n.op_type == op for n in g.node)  # noqa: E731
    return OrtFusion(fused, unfused, count("QLinearAdd"), kernel_adds, count("QLinearGlobalAveragePool"), kernel_pools)


@dataclass
class Exported:
    """One export: the lowered graph, the file's sizes and (quantized exports) ORT's fusion."""

    low: LoweredGraph
    file_bytes: int
    fp32_bytes: int
    packed_bytes: int
    fusion: OrtFusion | None

    def info(self) -> dict:
        """export_onnx's dict: the lowering's info, the sizes, the fusion figures and the proto ("proto")."""
        info = {
            **self.low.info(),
            "file_bytes": self.file_bytes,
            "fp32_bytes": self.fp32_bytes,
            "packed_bytes": self.packed_bytes,
            "size_ratio": round(self.file_bytes / self.fp32_bytes, 4),
            "packed_ratio": round(self.packed_bytes / self.fp32_bytes, 4),
        }
        return {**info, **(self.fusion.info() if self.fusion else {}), "proto": self.low.proto}


def write_onnx(
    model: nn.Module,
    input_shape,
    path: str | Path,
    *,
    target: str = "ort",
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    fp32: bool = False,
    residual_qdq: bool | None = None,
    int_bias: bool | None = None,
    graph: str = "exact",
    metadata: dict[str, str] | None = None,
) -> Exported:
    """Write the model's QDQ ONNX (or, with fp32=True, the float network with BN folded) to `path`, its
    metadata_props the toolkit's keys (export/metadata.py) and `metadata`."""
    low = lower_to_onnx(
        model,
        input_shape,
        target=target,
        opset=opset,
        dynamic_batch=dynamic_batch,
        fp32=fp32,
        residual_qdq=residual_qdq,
        int_bias=int_bias,
        graph=graph,
    )
    meta = {**base_metadata(input_shape, target, "onnx-fp32" if fp32 else "onnx"), **(metadata or {})}
    file_bytes = save_onnx(set_metadata(low.proto, meta), Path(path))
    # the float network's file as it would be written, the same metadata included: the size ratio compares graphs
    fp32_bytes = (
        file_bytes
        if fp32
        else len(
            set_metadata(
                lower_to_onnx(
                    model, input_shape, target=target, opset=opset, dynamic_batch=dynamic_batch, fp32=True
                ).proto,
                meta,
            ).SerializeToString()
        )
    )
    fusion = None
    if not fp32:  # residual Adds the model computes as QLinearAdd (quant/kernels.py), where it has integer biases
        kernels = target == "ort" and low.settings.int_bias
        kernel_adds = len(add_plans(model)) if kernels else None
        kernel_pools = len(pool_plans(model)) if kernels else None
        fusion = ort_fusion(low.proto, low.layers, kernel_adds, kernel_pools)
    return Exported(low, file_bytes, fp32_bytes, packed_bytes(low.proto, low.weight_bits), fusion)


def export_onnx(
    model: nn.Module,
    input_shape,
    path: str | Path,
    *,
    target: str = "ort",
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    fp32: bool = False,
    residual_qdq: bool | None = None,
    int_bias: bool | None = None,
    graph: str = "exact",
    metadata: dict[str, str] | None = None,
) -> dict:
    """Write the model's QDQ ONNX (or, with fp32=True, the float network with BN folded) to `path`.

    Returns the writer's info plus file_bytes, fp32_bytes (the float network's ONNX), packed_bytes and which
    layers ONNX Runtime fuses into integer kernels. The onnx proto is under the key "proto". `metadata`: extra
    metadata_props (classes, mean, std, ...: export/metadata.py) beside the toolkit's own.
    """
    return write_onnx(
        model,
        input_shape,
        path,
        target=target,
        opset=opset,
        dynamic_batch=dynamic_batch,
        fp32=fp32,
        residual_qdq=residual_qdq,
        int_bias=int_bias,
        graph=graph,
        metadata=metadata,
    ).info()


def _bits(scheme) -> tuple[int, int]:
    if scheme is None:
        return 32, 32
    return scheme.weight.bits, scheme.act.bits if scheme.act else 32


@dataclass
class ExportPlan:
    """What `export` writes where (the format dispatch), decided before any work."""

    run_dir: Path
    fmt: str
    target: str
    path: Path  # the ONNX file
    engine: Path | None  # --format tensorrt: the engine
    graph: str
    lowering: dict  # lower_to_onnx's settings: target, opset, dynamic_batch, residual_qdq, int_bias
    default_name: str
    trt: object = None

    @property
    def fp32(self) -> bool:
        return self.fmt == "onnx-fp32"


def plan_export(
    run_dir,
    *,
    fmt: str = "onnx",
    target: str = "ort",
    out=None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    residual_qdq: bool | None = None,
    int_bias: bool | None = None,
    graph: str = "exact",
    trt=None,
    onnx_in=None,
) -> ExportPlan:
    """Check the export's options and decide its files (QdgError for anything wrong, before any work; the ONNX
    path is checked by export_run_dir once the run directory is)."""
    if fmt not in FORMATS:
        raise QdgError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_opset(opset)
    engine = None
    if fmt == "tensorrt":
        from .tensorrt import TrtOptions, require_gpu, require_tensorrt
        from .trt_plan import profile_batches

        trt = trt or TrtOptions()
        trt.check()
        if not dynamic_batch and onnx_in is None:  # --static-batch exports batch 1: its profile is 1,1,1
            profile_batches(1, trt.batch_range)
        engine = Path(out) if out else Path(run_dir) / "model.engine"
        check_out_path(engine, "model.engine")  # --out names the engine with --format tensorrt
        require_tensorrt()
        require_gpu()  # no CUDA GPU: refused before any work (build_engine asks again for the report)
        target = "tensorrt"
    elif onnx_in is not None or trt is not None:
        raise QdgError("--onnx and the TensorRT build options go with --format tensorrt")
    default_name = {"onnx": "model.onnx", "onnx-fp32": "model.fp32.onnx", "tensorrt": "model.onnx"}[fmt]
    path = Path(out) if out and fmt != "tensorrt" else Path(run_dir) / default_name
    return ExportPlan(
        Path(run_dir),
        fmt,
        target,
        path,
        engine,
        graph,
        dict(target=target, opset=opset, dynamic_batch=dynamic_batch, residual_qdq=residual_qdq, int_bias=int_bias),
        default_name,
        trt,
    )


def export_step(run, model: nn.Module, plan: ExportPlan, tmp_path: Path) -> tuple[Exported, ExportReport]:
    """Lower the run's model once, write it to `tmp_path` (ONNX Runtime loads it back) and start its report."""
    shape = run.config["model"]["input_shape"]
    scheme = None if plan.fp32 else run.scheme
    bits, act_bits = _bits(scheme)
    meta = run_metadata(
        {**run.config, "hparams": {**run.config.get("hparams", {}), "method": run.metrics.get("method")}},
        {"scheme": None if scheme is None else scheme.name, "bits": bits, "act_bits": act_bits},
    )
    ex = write_onnx(model, shape, tmp_path, fp32=plan.fp32, graph=plan.graph, metadata=meta, **plan.lowering)
    ort_session(tmp_path, level="none")  # ORT loads the file itself before it replaces anything
    report = ExportReport(
        run=str(plan.run_dir),
        path=str(plan.path),
        format=plan.fmt,
        target=plan.target,
        scheme=None if scheme is None else scheme.name,
        arch=run.config["model"]["arch"],
        graph=plan.graph,
        bits=bits,
        act_bits=act_bits,
        opset=plan.lowering["opset"],
        dynamic_batch=plan.lowering["dynamic_batch"],
        int_bias=ex.low.settings.int_bias if plan.target == "ort" and not plan.fp32 else None,
        file_bytes=ex.file_bytes,
        fp32_bytes=ex.fp32_bytes,
        packed_bytes=ex.packed_bytes,
        notes=graph_notes(ex.low, ex.fusion),
    )
    report.ensemble = ensemble_note(run.config, report.to_json())  # an ensemble run: K and the per-member sizes
    return ex, report


def verify_step(
    model: nn.Module, low: LoweredGraph, sets: dict, *, console=None, device: torch.device = torch.device("cpu")
) -> dict:
    """ONNX Runtime's agreement with the torch model over `sets` (export/verify.py's figures)."""
    return verify_model(model, low.proto, low.probes, sets, console=console, device=device)


def compare_step(
    model: nn.Module,
    shape,
    plan: ExportPlan,
    low: LoweredGraph,
    verified: dict,
    sets: dict,
    *,
    console=None,
    device: torch.device = torch.device("cpu"),
) -> dict:
    """The other graph (--graph exact|lean) lowered, verified and timed beside the written one (the report's
    `graphs`); ORT-CPU latency by the timing harness at this process's torch thread count."""
    other = other_graph(plan.graph)
    alt = lower_to_onnx(model, shape, graph=other, **plan.lowering)
    alt_v = verify_step(model, alt, sets, console=console, device=device)
    threads = torch.get_num_threads()
    lat = ort_latency_ms({plan.graph: low.proto, other: alt.proto}, shape, threads=threads)
    return graph_comparison(plan.graph, verified, alt_v, lat, threads)


def check_agreement(verification: dict, min_agreement: float, force: bool, report: ExportReport) -> None:
    """Record the threshold in `verification`; below it, refuse (QdgError naming the cause) unless `force`."""
    below = verification["top1_agreement"] < min_agreement
    verification["min_agreement"], verification["below_min_agreement"] = min_agreement, below
    if below and not force:
        raise QdgError(refusal({**report.to_json(), **verification}, Path(report.path)))


def export_run_dir(
    run_dir: str | Path,
    *,
    fmt: str = "onnx",
    target: str = "ort",
    out: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    verify: bool = True,
    residual_qdq: bool | None = None,
    int_bias: bool | None = None,
    max_samples: int | None = None,
    graph: str = "exact",
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    force: bool = False,
    console=None,
    onnx_in: str | Path | None = None,
    trt=None,
    device: str = "cpu",
) -> ExportReport | dict:
    """Export a run directory's selected model; writes PATH and PATH's .export.json report; returns the report.

    The steps, in order: plan_export (format dispatch, every check), export_step (one lowering, the file, the
    report's sizes and notes), verify_step and compare_step (with `verify`), check_agreement, the TensorRT engine
    (--format tensorrt). The file is written beside PATH under a temporary name and verified there; below
    `min_agreement` (top-1 agreement with the torch model) the export is refused (QdgError naming the cause) and
    PATH and its report are left as they were, unless `force`. verify=False measures nothing and so checks nothing
    ("verified": false).

    fmt "tensorrt": the ONNX export for --target tensorrt (RUN_DIR/model.onnx and its report), then the engine
    (`out`, default RUN_DIR/model.engine) and its model.engine.json, built with `trt` (TrtOptions); with
    `onnx_in` the engine is built from that ONNX and nothing is exported (a dict of the engine's keys is
    returned). Every file reaches its name only when all of them are ready."""
    from ..runs import load_run

    if fmt not in FORMATS:
        raise QdgError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_min_agreement(min_agreement)
    check_opset(opset)
    torch_device = resolve_device(device)  # the torch side of --verify
    if max_samples is not None and max_samples < 1:
        raise QdgError(f"--max-samples takes an integer >= 1 (got {max_samples}); leave it out to verify every sample")
    plan = plan_export(
        run_dir,
        fmt=fmt,
        target=target,
        out=out,
        opset=opset,
        dynamic_batch=dynamic_batch,
        residual_qdq=residual_qdq,
        int_bias=int_bias,
        graph=graph,
        trt=trt,
        onnx_in=onnx_in,
    )
    if onnx_in is not None:
        return build_given_onnx(Path(onnx_in), plan.engine, plan.trt)
    run = load_run(run_dir)
    check_out_path(plan.path, plan.default_name)  # where the files go, checked before any work
    if run.scheme is None and not plan.fp32:
        raise QdgError(f"{run_dir} holds a float model (no quantization scheme): use --format onnx-fp32")
    model = strip_quantizers(run.model) if plan.fp32 else run.model
    # both files reach their names only once the model is verified (and, for TensorRT, its engine built)
    with atomic_path(report_name(plan.path)) as tmp_report, atomic_path(plan.path) as tmp_model:
        ex, report = export_step(run, model, plan, tmp_model)
        report.verified = verify
        if verify:
            sets = run.data().scored_sets(max_samples)
            verification = verify_step(model, ex.low, sets, console=console, device=torch_device)
            if not plan.fp32:
                report.graphs = compare_step(
                    model,
                    run.config["model"]["input_shape"],
                    plan,
                    ex.low,
                    verification,
                    sets,
                    console=console,
                    device=torch_device,
                )
            check_agreement(verification, min_agreement, force, report)
            report.verification = verification
        if plan.engine is not None:
            from .tensorrt import build_engine, write_engine_files

            built = build_engine(tmp_model, plan.engine, plan.trt, onnx_label=str(plan.path))
            report.engine = engine_keys(plan.engine, built[1])
        report.write(tmp_report)
        if plan.engine is not None:  # the last step: every file is ready, all reach their names together
            write_engine_files(plan.engine, built, plan.trt.timing_cache)
    return report


def build_given_onnx(onnx_path: Path, engine: Path, trt) -> dict:
    """`--format tensorrt --onnx PATH`: the engine from an ONNX already exported (checked, not re-verified)."""
    from .tensorrt import build_engine, write_engine_files

    if not onnx_path.is_file():
        raise QdgError(f"--onnx {onnx_path}: no such file")
    built = build_engine(onnx_path, engine, trt)
    write_engine_files(engine, built, trt.timing_cache)
    return {"path": str(onnx_path), "format": "tensorrt", **engine_keys(engine, built[1])}


def engine_keys(engine: Path, built: dict) -> dict:
    """What an export report says of the engine built beside it (the details are in model.engine.json)."""
    from .tensorrt import engine_report_path

    return {
        "engine": str(engine),
        "engine_bytes": built["engine_bytes"],
        "engine_report": str(engine_report_path(engine)),
        "not_int8": len(built["not_int8"]),
        "build_seconds": built["build_seconds"],
        "tensorrt": built["tensorrt"],
    }


def check_out_path(p: Path, default_name: str) -> None:
    """An output file path that can be written: not a directory, in a writable folder."""
    if p.is_dir():
        raise QdgError(f"--out {p} is a directory: give a file path, e.g. {p / default_name}")
    if (blocked := writable_folder(p)) is not None:
        raise QdgError(
            f"--out {p}: cannot write in {blocked} (read-only, not permitted or not a folder); choose another --out"
        )


def check_opset(opset: int) -> None:
    """--opset within what both this onnx package writes and this ONNX Runtime runs (its Q/DQ kernels)."""
    from ..ort_session import ort_max_opset
    from .onnx_writer import MIN_OPSET

    top = ort_max_opset()
    if not MIN_OPSET <= opset <= top:
        import onnxruntime

        raise QdgError(
            f"--opset {opset} is outside {MIN_OPSET}..{top}: onnx {onnx.__version__} writes up to "
            f"{onnx.defs.onnx_opset_version()}, ONNX Runtime {onnxruntime.__version__} runs Q/DQ up to "
            f"{top}; nothing was written"
        )


def check_min_agreement(value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise QdgError(f"--min-agreement takes a fraction in [0, 1], e.g. 0.999 (got {value!r})")


def refusal(report: dict, path: Path) -> str:
    """The one line that refuses an export below --min-agreement: the figures, the worst split, the cause."""
    a, m, n = report["top1_agreement"], report["min_agreement"], report["n_samples"]
    worst = min(report["splits"], key=lambda k: report["splits"][k]["top1_agreement"])
    return (
        f"export refused: top-1 agreement with torch {a:.6g} ({round(a * n)} of {n} samples) < --min-agreement "
        f"{m:g} (worst split {worst}: {report['splits'][worst]['top1_agreement']:.6g}); cause: "
        f"{refusal_cause(report)}; {path} not written (--force writes it anyway)"
    )


def refusal_cause(report: dict) -> str:
    """Why the export is inexact, from what the report says of its graph."""
    if report.get("requantized"):
        return (
            f"trained with scheme {report['scheme']}: asymmetric zero points; TensorRT needs zero point 0 "
            f"({len(report['requantized'])} activation quantizer(s) requantized to symmetric int8) — retrain "
            f"with --scheme trt"
        )
    if report.get("residual_qdq"):
        return (
            f"--residual-qdq put Q/DQ on {len(report['residual_qdq'])} residual Add input(s) the trained model "
            f"adds in float — export without --residual-qdq (or train with --scheme trt/ort, whose residual "
            f"quantizers make that placement exact)"
        )
    first = (report.get("layer_divergence") or {}).get("first_divergence")
    return (
        "ONNX Runtime and the torch model disagree"
        + (f"; first divergence: {first}" if first else "")
        + " (--force writes the report, with its per-layer comparison)"
    )

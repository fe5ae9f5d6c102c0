"""The export report's graph section (`model.export.json`), built from the lowering records (export/records.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..io import write_json
from .onnx_writer import LoweredGraph
from .records import Bias, Lowered

WEIGHT_ONLY_NOTE = {
    "ort": (
        "weight-only layers: int8 codes ─ Cast ─ Mul(per-channel float32 scales) into a float Conv, the same "
        "float32 weights as DequantizeLinear gives; ONNX Runtime folds Cast and Mul into constant weights when "
        "it creates the session (it does not fold a DequantizeLinear while its QDQ optimizations are on), so "
        "these layers run at the FP32 export's speed: they shrink the file but compute in float"
    ),
    "tensorrt": (
        "weight-only layers: integer codes + DequantizeLinear into a float Conv; they shrink the file "
        "but compute in float (TensorRT runs a convolution in INT8 only when its input is quantized too)"
    ),
}
INT32_GRID_NOTE = (
    "trained with integer biases (scheme int_bias): each bias already sits on the int32 grid s_x·s_w "
    "in the torch model's eval mode, so ONNX Runtime's QLinearConv holds it exactly"
)
SNAPPED_NOTE = (
    "each of these layers' output is snapped to its integer accumulator (Conv, then Div/Round/Mul by the "
    "float32 unit s_x·s_w, then the folded bias), in the graph and in the torch model's eval forward: "
    "both hold the same float32 values whatever order their kernels sum in (quant/kernels.py)"
)
ORT_KERNEL_NOTE = (
    "ONNX Runtime CPU runs these layers as integer kernels into the next quantizer (QLinearConv / "
    "QGemm; a classifier as QGemm with float output), and the torch model's eval forward computes what those kernels compute (int32 sum, "
    "float32 requantization; residual Adds as QLinearAdd), measured bit for bit against ORT 1.32's "
    "x86 kernels on a CPU with VNNI (AVX2 without VNNI can saturate int16 pair sums)"
)
RESIDUAL_QUANTIZERS_NOTE = (
    "the model trained quantizers on its residual Adds' inputs (scheme residual=True): their "
    "Q/DQ reproduce the torch model, so ONNX Runtime and TensorRT run those Adds and the convs "
    "feeding them as integer kernels"
)
REQUANTIZED_NOTE = (
    "TensorRT takes zero point 0 only: these activation quantizers were requantized to symmetric "
    "int8, so this export is not exact; see the measured agreement"
)
RESIDUAL_QDQ_NOTE = (
    "TensorRT placement: residual Adds take the block input's quantized tensor (the one its first "
    "conv reads); the torch model adds the float tensor, so this changes the numerics; see the "
    "measured agreement"
)


@dataclass
class OrtFusion:
    """What ONNX Runtime CPU's optimized graph runs as integer kernels, and what the model computes as such."""

    fused_layers: list[str]
    unfused_layers: list[str]
    fused_adds: int
    kernel_adds: int | None  # residual Adds the model computes as QLinearAdd (target ort with integer biases)
    fused_pools: int = 0
    kernel_pools: int | None = None  # global pools the model computes as QLinearGlobalAveragePool (likewise)

    def info(self) -> dict:
        out = {
            "ort_fused_layers": self.fused_layers,
            "ort_unfused_layers": self.unfused_layers,
            "ort_fused_adds": self.fused_adds,
        }
        # the keys depend on the export's settings (target ort, integer biases), never on the model: 0 is written
        if self.kernel_adds is not None:
            out["ort_kernel_adds"] = self.kernel_adds
        if self.kernel_pools is not None:
            out["ort_fused_pools"], out["ort_kernel_pools"] = self.fused_pools, self.kernel_pools
        return out


def graph_notes(low: LoweredGraph, fusion: OrtFusion | None) -> dict:
    layers = low.layers
    acts = [(r.layer, r.act) for r in layers if r.act is not None]
    notes = {
        "layers": [r.as_json() for r in layers],
        "clipped": [{"layer": n, "clip": a.clip} for n, a in acts if a.clip is not None],
        "requantized": [{"layer": n, "how": a.requantized} for n, a in acts if a.requantized is not None],
        "weight_only_layers": [r.layer for r in layers if r.weight_only],
        "bn_folded": [r.bn_folded for r in layers if r.bn_folded],
        "residual_qdq": [r.as_json() for r in low.residual_qdq],
        "residual_quantizers": [
            {k: v for k, v in r.as_json().items() if k in ("quantizer", "type", "zero_point", "exact", "shared")}
            for r in low.residual_quantizers
        ],
    }
    for listed, key, note in (
        ("residual_quantizers", "residual_quantizers_note", RESIDUAL_QUANTIZERS_NOTE),
        ("weight_only_layers", "weight_only_note", WEIGHT_ONLY_NOTE[low.settings.target]),
        ("requantized", "requantized_note", REQUANTIZED_NOTE),
    ):
        if notes[listed]:
            notes[key] = note
    grid = [r.layer for r in layers if r.bias is Bias.INT32_GRID]  # biases an integer kernel holds exactly
    if grid:
        notes["int32_grid_bias_layers"], notes["int32_grid_bias_note"] = grid, INT32_GRID_NOTE
    if notes["residual_qdq"]:
        notes["residual_qdq_note"] = RESIDUAL_QDQ_NOTE
    if fusion is not None:
        notes["ort_fused_layers"], notes["ort_unfused_layers"] = fusion.fused_layers, fusion.unfused_layers
    notes.update(_lowering_notes(layers, fusion))
    return notes


def _lowering_notes(layers, fusion: OrtFusion | None) -> dict:
    """The snapped layers and those computed as ORT's kernels, and the kernels this ORT build does not run."""
    notes: dict[str, object] = {}
    snapped = [r.layer for r in layers if r.lowered is Lowered.SNAPPED]
    kernels = [r.layer for r in layers if r.lowered is Lowered.ORT_KERNEL]
    if snapped:
        notes["snapped_layers"], notes["snapped_note"] = snapped, SNAPPED_NOTE
    if kernels:
        notes["ort_kernel_layers"], notes["ort_kernel_note"] = kernels, ORT_KERNEL_NOTE
        missing = sorted(set(kernels) - set(fusion.fused_layers if fusion is not None else kernels))
        if fusion is not None and (fusion.kernel_adds or 0) > fusion.fused_adds:
            missing.append(f"{fusion.kernel_adds - fusion.fused_adds} residual Add(s)")
        if fusion is not None and (fusion.kernel_pools or 0) > fusion.fused_pools:
            missing.append(f"{fusion.kernel_pools - fusion.fused_pools} global pool(s)")
        if missing:  # the model computes these as integer kernels, but this ORT build runs them otherwise
            notes["ort_kernel_mismatch"] = missing
    return notes


def ensemble_note(config: dict, report: dict) -> dict | None:
    """For an ensemble run's export report (its config.json says so, workflows/ensemble.py): K, and the file and packed sizes per member (K × member in all)."""
    ens = config.get("ensemble")
    if not ens:
        return None
    k = ens["k"]
    return {
        "kind": ens["kind"],
        "k": k,
        "members": ens["members"],
        "member_file_bytes": report["file_bytes"] / k,
        "member_packed_bytes": report["packed_bytes"] / k,
        "member_fp32_bytes": report["fp32_bytes"] / k,
        "packed_vs_one_fp32_member": report["packed_bytes"] / (report["fp32_bytes"] / k),
        "note": "one ONNX graph: every member's layers, their logits summed by K-1 Adds (the torch "
        "ensemble's own order); sizes are K × one member's",
    }


EXPORT_REPORT_VERSION = 1


@dataclass(eq=False)
class ExportReport(Mapping):
    """`model.export.json`: what was exported (typed), what the lowering noted, and what each step that ran added:
    verification (verify_step), the other graph (compare_step), the engine (engine_keys). Written here only
    (`write`); as a Mapping it reads as its JSON (report["top1_agreement"])."""

    run: str
    path: str
    format: str
    target: str
    scheme: str | None
    arch: str
    graph: str
    bits: int
    act_bits: int
    opset: int
    dynamic_batch: bool
    int_bias: bool | None
    file_bytes: int
    fp32_bytes: int
    packed_bytes: int
    notes: dict = field(default_factory=dict)  # graph_notes: the lowering's records and notes
    ensemble: dict | None = None  # ensemble_note, for an ensemble run
    verified: bool = False
    verification: dict | None = None  # verify_step's figures, then min_agreement / below_min_agreement
    graphs: dict | None = None  # compare_step's figures
    engine: dict | None = None  # engine_keys, with --format tensorrt
    schema_version: int = EXPORT_REPORT_VERSION

    @property
    def size_ratio(self) -> float:
        return round(self.file_bytes / self.fp32_bytes, 4)

    @property
    def packed_ratio(self) -> float:
        return round(self.packed_bytes / self.fp32_bytes, 4)

    def to_json(self) -> dict:
        out = {
            "schema_version": self.schema_version,
            "run": self.run,
            "path": self.path,
            "format": self.format,
            "target": self.target,
            "scheme": self.scheme,
            "arch": self.arch,
            "graph": self.graph,
            "bits": self.bits,
            "act_bits": self.act_bits,
            "opset": self.opset,
            "dynamic_batch": self.dynamic_batch,
            "int_bias": self.int_bias,
            "file_bytes": self.file_bytes,
            "fp32_bytes": self.fp32_bytes,
            "packed_bytes": self.packed_bytes,
            "size_ratio": self.size_ratio,
            "packed_ratio": self.packed_ratio,
            **self.notes,
        }
        if self.ensemble is not None:
            out["ensemble"] = self.ensemble
        out["verified"] = self.verified
        v = dict(self.verification or {})
        tail = {k: v.pop(k) for k in ("min_agreement", "below_min_agreement") if k in v}
        out.update(v)
        if self.graphs is not None:
            out["graphs"] = self.graphs
        out.update(tail)
        out.update(self.engine or {})
        return out

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())

    def __getitem__(self, key):
        return self.to_json()[key]

    def __iter__(self):
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())

"""What `qdg-deploy bench` measures: a run directory, an `.onnx` file or a TensorRT `.engine` file.

The data set of an `.onnx` / `.engine` comes from the run directory around it: its parent directory when
that holds a `config.json` written by `qdg-deploy train` (where `qdg-deploy export` writes
`RUN_DIR/model.onnx`); for a bare `.onnx`, from the metadata the exporter wrote into it (data set, split seed,
input pipeline: export/metadata.py). A bare file without either is still timed and sized; its accuracy is
skipped with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..errors import QdgError
from ..io import read_json
from ..runs import CONFIG, WEIGHTS, missing_run_files, read_run_json

ONNX_NAME, FP32_ONNX_NAME, ENGINE_NAME = "model.onnx", "model.fp32.onnx", "model.engine"


@dataclass
class Artifact:
    path: Path
    kind: str  # "run" | "onnx" | "engine"
    run_dir: Path | None = None  # the run directory (the artifact itself, or the one around a file)
    label: str = ""
    extra: dict = field(default_factory=dict)

    @cached_property
    def config(self) -> dict | None:
        if self.run_dir:
            return read_run_json(self.run_dir / CONFIG)
        if self.kind == "onnx":  # a bare export: what its metadata says of its run
            from ..export.metadata import config_from_metadata, read_metadata

            try:
                return config_from_metadata(read_metadata(self.path))
            except Exception:  # not readable as ONNX: the runtime says so when it opens it
                return None
        return None

    @property
    def onnx_path(self) -> Path | None:
        """The .onnx itself; for a run directory its model.onnx (the QDQ export), else model.fp32.onnx."""
        if self.kind == "onnx":
            return self.path
        if self.kind == "run":
            for name in (ONNX_NAME, FP32_ONNX_NAME):
                if (self.path / name).is_file():
                    return self.path / name
        return None

    @property
    def engine_path(self) -> Path | None:
        if self.kind == "engine":
            return self.path
        if self.kind == "run" and (self.path / ENGINE_NAME).is_file():
            return self.path / ENGINE_NAME
        return None

    @property
    def quantized(self) -> bool | None:
        """Whether the run's network is quantized (None without a run directory)."""
        return bool(self.config["model"].get("scheme")) if self.config else None

    @property
    def input_shape(self) -> list[int] | None:
        """[C, H, W] from the run directory, else from the ONNX graph input; None if unknown."""
        if self.config:
            return list(self.config["model"]["input_shape"])
        if self.kind == "onnx":
            dims = onnx_input_dims(self.path)[1:]
            if all(isinstance(d, int) and d > 0 for d in dims):
                return dims
        return None

    def export_report(self, file: Path | None = None) -> dict | None:
        """The exporter's report for `file` (default: the artifact's own file): X.onnx → X.export.json."""
        file = file or (self.path if self.kind != "run" else self.onnx_path)
        if file is None:
            return None
        p = file.with_name(file.stem + ".export.json")
        if p.is_file():
            try:
                return read_json(p)
            except ValueError:
                return None
        return None


def resolve_artifact(path: str | Path) -> Artifact:
    p = Path(path)
    if p.is_dir():
        missing = missing_run_files(p)
        if missing:
            raise QdgError(f"{p} is neither a run directory ({', '.join(missing)} missing) nor an .onnx/.engine file")
        return Artifact(p, "run", p, label=str(path))
    if not p.is_file():
        raise QdgError(f"artifact not found: {p}")
    suffix = p.suffix.lower()
    kind = {".onnx": "onnx", ".engine": "engine", ".plan": "engine", ".trt": "engine"}.get(suffix)
    if kind is None:
        raise QdgError(
            f"{p}: unknown artifact type {suffix or '(no suffix)'}; give a run directory, an .onnx or an .engine"
        )
    run_dir = p.parent if not missing_run_files(p.parent, (CONFIG, WEIGHTS)) else None
    return Artifact(p, kind, run_dir, label=str(path))


def onnx_input_dims(path: Path) -> list:
    """The dims of the ONNX model's single input: ints, or the symbolic name / None where dynamic."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise QdgError(f"cannot read ONNX {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise QdgError(f"{path}: expected one input tensor, found {len(inputs)}")
    dims = []
    for d in inputs[0].type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    if len(dims) != 4:
        raise QdgError(f"{path}: expected an NCHW input, found {len(dims)} dimensions")
    return dims


def onnx_size(path: Path) -> dict:
    """Parameter count and stored weight bytes of an ONNX file (initializers, at their stored type).

    Quantization scales and zero points (inputs 1 and 2 of Quantize/DequantizeLinear, and the scales an
    exporter's Cast of integer codes is multiplied by) count in the bytes but not in the parameter count.
    """
    import numpy as np
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    qparams = set()
    casts = {n.output[0] for n in model.graph.node if n.op_type == "Cast"}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            qparams.update(node.input[1:])
        elif node.op_type == "Mul" and node.input[0] in casts and node.name.endswith(".weight_dq"):
            qparams.update(node.input[1:])  # codes ─ Cast ─ Mul(scales): export/lower_qdq.weight_dq
    params = stored = 0
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if len(init.dims) else 1
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        except Exception:
            itemsize = 4
        bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(init.data_type, itemsize * 8)
        stored += n * bits / 8
        if init.name not in qparams and init.data_type != onnx.TensorProto.INT64:  # int64: shapes, axes
            params += n
    return {"params": int(params), "packed_bytes": int(round(stored))}

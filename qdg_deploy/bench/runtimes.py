"""Runtimes behind one small interface, auto-detected.

    rt = get_runtime("ort-cpu")
    ok, why = rt.available()            # can this machine run it at all?
    ok, why = rt.applies(artifact)      # can it run this artifact?
    session = rt.load(artifact, threads=2)
    logits = session.run(batch)         # np.float32 NCHW in, logits out; returns when the result is ready

| name      | runs                                   | takes                         |
|-----------|----------------------------------------|-------------------------------|
| torch-fp32| the float network (quantizers removed) | a run directory               |
| torch-fq  | the fake-quant network of a quantized run | a quantized run directory  |
| ort-cpu   | ONNX Runtime, CPU execution provider   | .onnx (or RUN_DIR/model.onnx) |
| ort-cuda  | ONNX Runtime, CUDA execution provider  | .onnx                         |
| ort-trt   | ONNX Runtime, TensorRT EP + engine cache | .onnx                       |
| trt       | native TensorRT engine                 | .engine (or RUN_DIR/model.engine) |

`Session.copies` says whether host↔device copies are inside the timed `run`: "included", "excluded" or
"none" (a CPU runtime: input and output already live in host memory).
"""

from __future__ import annotations

from ..errors import QdgError
from .runtime_ort import OrtCPU, OrtCUDA, OrtTRT
from .runtime_torch import TorchFP32, TorchFQ
from .runtime_trt import TrtRuntime
from .session import COPIES_EXCLUDED, COPIES_INCLUDED, COPIES_NONE, Runtime, Session, cuda_device_name

__all__ = [
    "COPIES_EXCLUDED",
    "COPIES_INCLUDED",
    "COPIES_NONE",
    "RUNTIMES",
    "Runtime",
    "Session",
    "cuda_device_name",
    "get_runtime",
    "list_runtimes",
    "register_runtime",
]

RUNTIMES: dict[str, Runtime] = {
    rt.name: rt for rt in (TorchFP32(), TorchFQ(), OrtCPU(), OrtCUDA(), OrtTRT(), TrtRuntime())
}


def register_runtime(rt: Runtime) -> Runtime:
    """Add a runtime (for code outside this package)."""
    RUNTIMES[rt.name] = rt
    return rt


def get_runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise QdgError(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}") from None


def list_runtimes() -> list[dict]:
    """[{name, description, available, reason, versions}] for every registered runtime."""
    rows = []
    for rt in RUNTIMES.values():
        try:
            ok, why = rt.available()
        except Exception as e:  # detection must never take the command down
            ok, why = False, f"detection failed: {type(e).__name__}: {e}"
        rows.append(
            {
                "name": rt.name,
                "description": rt.description,
                "available": ok,
                "reason": why,
                "versions": rt.versions() if ok else {},
            }
        )
    return rows


# ---------------------------------------------------------------- GPU detection (shared)

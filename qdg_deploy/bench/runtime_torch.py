"""bench runtimes torch-fp32 (the float network, quantizers stripped) and torch-fq (the fake-quant network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifacts import Artifact
from .session import COPIES_EXCLUDED, COPIES_INCLUDED, COPIES_NONE, Runtime, Session


class TorchSession(Session):
    def __init__(
        self, runtime: str, model, file: Path, size: dict, threads: int | None, device=None, copies: bool = True
    ):
        import torch

        from ..device import resolve_device

        self.runtime, self.file, self._size, self.threads = runtime, file, size, threads
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._torch, self._staged = torch, None
        self.info = {"device": str(self.device), "torch_threads": threads or torch.get_num_threads()}
        if self.device.type == "cpu":  # nothing to copy
            self.copies, self.run = COPIES_NONE, self._run_copies
        else:  # as the ORT / TensorRT sessions: --no-copies times the compute alone
            self.copies = COPIES_INCLUDED if copies else COPIES_EXCLUDED
            self.run = self._run_copies if copies else self._run_on_device

    def _run_copies(self, x: np.ndarray):
        # host -> device -> host for every call, as a deployed model is fed (the copy back also waits for the GPU)
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(x).to(self.device)).cpu().numpy()

    def _run_on_device(self, x: np.ndarray):
        """The input copied to the device once per batch (outside the timing loop), the output left there: compute
        only (synchronized, so the time is the GPU's)."""
        if self._staged is None or self._staged[0] is not x:
            self._staged = (x, self._torch.from_numpy(x).to(self.device))
        with self._torch.inference_mode():
            self.model(self._staged[1])
        self._torch.cuda.synchronize(self.device)
        return None

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._run_copies(x))

    def size(self) -> dict:
        return dict(self._size)


class _TorchRuntime(Runtime):
    takes_device = True  # bench --device: where the model runs

    def available(self):
        try:
            import torch
        except ImportError as e:
            return False, f"torch not importable: {e}"
        return True, f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads"

    def versions(self):
        import torch

        return {"torch": torch.__version__}

    def _needs_run(self, artifact: Artifact) -> tuple[bool, str]:
        if artifact.kind != "run":
            return False, f"{self.name} takes a run directory, not an .{artifact.kind} file"
        return True, ""

    def _session(self, artifact, model, threads, device=None, copies=True):
        import torch

        from ..quant import model_size
        from ..runs import WEIGHTS

        if threads:
            torch.set_num_threads(threads)
        weights = artifact.run_dir / WEIGHTS
        sz = model_size(model)
        size = {
            "file": str(weights),
            "file_bytes": weights.stat().st_size,
            "packed_bytes": sz["packed_bytes"],
            "params": sz["params"],
        }
        return TorchSession(self.name, model, weights, size, threads, device, copies)


class TorchFP32(_TorchRuntime):
    name = "torch-fp32"
    description = "PyTorch eager, float network (a quantized run's weights with quantizers removed)"

    def applies(self, artifact):
        return self._needs_run(artifact)

    def load(self, artifact, *, threads=None, copies=True, device=None):
        from ..quant import strip_quantizers
        from ..runs import load_run

        return self._session(artifact, strip_quantizers(load_run(artifact.run_dir).model), threads, device, copies)


class TorchFQ(_TorchRuntime):
    name = "torch-fq"
    description = "PyTorch eager, fake-quant network of a quantized run"

    def applies(self, artifact):
        ok, why = self._needs_run(artifact)
        if ok and not artifact.quantized:
            return False, "not applicable: the run is not quantized (its float network is torch-fp32)"
        return ok, why

    def load(self, artifact, *, threads=None, copies=True, device=None):
        from ..runs import load_run

        return self._session(artifact, load_run(artifact.run_dir).model, threads, device, copies)


# ---------------------------------------------------------------- ONNX Runtime

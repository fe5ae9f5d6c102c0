"""What every bench runtime implements (Session, Runtime) and the GPU detection they share."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from .artifacts import Artifact

COPIES_NONE, COPIES_INCLUDED, COPIES_EXCLUDED = "none", "included", "excluded"


class Session:
    """A loaded artifact on one runtime. `run` is what is timed; `predict` computes logits for accuracy."""

    runtime: str = ""
    copies: str = COPIES_NONE
    file: Path | None = None
    fixed_batch: int | None = None  # the only batch size the artifact accepts, if it has one
    batch_limits: tuple[int, int] | None = None  # (min, max) batch it accepts: a TensorRT optimization profile
    threads: int | None = None
    info: dict = {}

    def run(self, x: np.ndarray):
        raise NotImplementedError

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.run(x))

    def size(self) -> dict:
        """{"file", "file_bytes", "packed_bytes", "params"} of what this session loaded."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def in_batches(fn, x: np.ndarray, limits: tuple[int, int] | None) -> np.ndarray:
    """`fn` over `x` in chunks within (min, max) batch (a TensorRT profile): the last chunk padded up to min with
    zeros, the padding's rows dropped from the result."""
    if limits is None or limits[0] <= len(x) <= limits[1]:
        return np.asarray(fn(x))
    lo, hi = limits
    outs = []
    for i in range(0, len(x), hi):
        part = x[i : i + hi]
        n = len(part)
        if n < lo:
            part = np.concatenate([part, np.zeros((lo - n, *part.shape[1:]), part.dtype)])
        outs.append(np.asarray(fn(part))[:n])
    return np.concatenate(outs)


class Runtime:
    name: str = ""
    description: str = ""
    cuda_graph: bool = False  # load() also takes cuda_graph= (replay a captured CUDA graph per batch shape)
    takes_device: bool = False  # load() also takes device= (bench --device: where a torch model runs)

    def available(self) -> tuple[bool, str]:
        """(True, details) when this machine can run it, else (False, why not)."""
        raise NotImplementedError

    def applies(self, artifact: Artifact) -> tuple[bool, str]:
        """(True, "") when this runtime can run `artifact`, else (False, why not)."""
        raise NotImplementedError

    def load(self, artifact: Artifact, *, threads: int | None = None, copies: bool = True) -> Session:
        """A session; a runtime with `cuda_graph = True` also takes `cuda_graph=` (replay a captured CUDA graph)."""
        raise NotImplementedError

    def versions(self) -> dict:
        return {}


RUNTIMES: dict[str, Runtime] = {}


def cuda_device_name() -> str | None:
    """Name of CUDA device 0, or None where there is none (torch first, then nvidia-smi)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    if shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
            )
            names = [s.strip() for s in r.stdout.splitlines() if s.strip()]
            if r.returncode == 0 and names:
                return names[0]
        except Exception:
            pass
    if Path("/etc/nv_tegra_release").exists():  # Jetson: integrated GPU, no nvidia-smi
        return "NVIDIA Jetson (integrated GPU)"
    return None


# ---------------------------------------------------------------- torch

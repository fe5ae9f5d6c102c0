"""Where torch runs: `--device auto|cpu|cuda|cuda:N`, `--amp bf16|fp16|off`, `--channels-last`, batch moves.

One resolver for every verb that runs a torch model (train, eval, export --verify, calibrate, bench's torch
runtimes), so a bad value is the same one-line error everywhere, before any data is read."""

from __future__ import annotations

import ctypes
import os
import re
import sys
from contextlib import contextmanager, nullcontext

import torch

from .errors import QdgError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str | None = "auto", local_rank: int | None = None) -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N' -> a torch.device; QdgError when CUDA is
    asked for and absent. Under torchrun, 'auto' / 'cuda' take the process's LOCAL_RANK GPU."""
    spec = (spec or "auto").strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec):
        raise QdgError(f"--device takes auto, cpu, cuda or cuda:N (got {spec!r})")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise QdgError(
            f"--device {spec}: CUDA is not available here (torch {torch.__version__}, "
            f"{'built without CUDA' if torch.version.cuda is None else 'no GPU visible'}); use --device cpu"
        )
    index = int(spec.split(":")[1]) if ":" in spec else (local_rank or 0)
    if index >= torch.cuda.device_count():
        raise QdgError(f"--device {spec}: there are {torch.cuda.device_count()} GPU(s) here (cuda:0..)")
    return torch.device("cuda", index)


def resolve_amp(spec: str | None, device: torch.device) -> str:
    """'bf16', 'fp16' or 'off'; None: bf16 on a CUDA device that supports it, else off (CPU autocast is slower than
    float32 for these networks on most CPUs, so it is only used when asked for)."""
    if spec is None:
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    spec = spec.strip().lower()
    if spec not in ("bf16", "fp16", "off"):
        raise QdgError(f"--amp takes bf16, fp16 or off (got {spec!r})")
    if spec == "fp16" and device.type != "cuda":
        raise QdgError("--amp fp16 needs a CUDA device (CPU autocast computes in bf16): use --amp bf16 or off")
    return spec


def autocast(device: torch.device, amp: str):
    """The autocast context of the float parts of a training step (a no-op context with amp 'off')."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def to_device(t: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Move a batch tensor; from pinned memory the copy is asynchronous (non_blocking). Image batches (4-D) take the
    channels-last layout with `channels_last`."""
    if channels_last and t.dim() == 4:
        return t.to(device, non_blocking=True, memory_format=torch.channels_last)
    return t.to(device, non_blocking=True)


def move_batch(batch, device: torch.device, channels_last: bool = False):
    """(x, y, ...) onto the device."""
    return tuple(to_device(t, device, channels_last) if isinstance(t, torch.Tensor) else t for t in batch)


def place_model(model: torch.nn.Module, device: torch.device, channels_last: bool = False) -> torch.nn.Module:
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def module_device(f) -> torch.device | None:
    """The device of a module's parameters (where evaluation helpers move their CPU batches); None for a plain
    callable, which takes care of its inputs itself."""
    if isinstance(f, torch.nn.Module):
        p = next(f.parameters(), None)
        return p.device if p is not None else None
    return None


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op thread count set to `n` inside the block (None: left as it is); the count is process-wide,
    so the previous one comes back afterwards (for in-process callers: tests, sweeps, the Python API)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


def pin(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Page-locked memory for a host batch bound for a GPU (so its copy can be non_blocking); as is for the CPU."""
    return t.pin_memory() if device.type == "cuda" else t


def fp32_region(x: torch.Tensor):
    """The context in which fake-quant arithmetic runs: autocast off where it is on (codes, steps and their
    gradients are computed in float32 whatever the autocast of the layer around them)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return nullcontext()


# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_MAX = 32 << 20  # the largest M_MMAP_THRESHOLD glibc accepts on 64-bit systems


def keep_freed_memory() -> bool:
    """CPU training: glibc's malloc keeps the memory torch frees in the process instead of handing it back to the
    kernel, so each step reuses the previous step's pages (blocks up to 32 MiB: larger ones are always mapped anew).

    A training step frees and reallocates the same activation- and weight-sized buffers every step. By default glibc
    returns large freed blocks to the kernel (mmap above a threshold, heap trimming), so the next step faults the
    pages in again: on a 2-core VM each fresh 4 KiB page cost ~2 µs, up to 15 µs, and a W8A8 ResNet-18 step took
    ~1,400-2,700 such faults (float 0-900). The setting is process-wide and stays: the process (a Python caller of
    `train_one` too, and DataLoader workers it starts later) keeps its peak memory until it exits. A threshold the
    user set (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_) is kept, and is the way to opt out; other C libraries:
    nothing is changed. Returns whether the setting is on."""
    if not sys.platform.startswith("linux") or any(
        k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl and others have their own allocators
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))

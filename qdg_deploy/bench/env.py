"""The machine a benchmark ran on: CPU model, threads, GPU, runtime versions, Jetson power mode."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from .session import cuda_device_name


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        import cpuinfo
        return cpuinfo.get_cpu_info().get("brand_raw") or platform.processor()
    except Exception:
        return platform.processor() or "unknown"


def jetson_power_mode() -> str | None:
    """`nvpmodel -q`'s mode on a Jetson (e.g. 'MAXN (0)'), else None."""
    if not Path("/etc/nv_tegra_release").exists() and not shutil.which("nvpmodel"):
        return None
    if shutil.which("nvpmodel"):
        try:
            r = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10)
            lines = [s.strip() for s in r.stdout.splitlines() if s.strip()]
            name = next((s.split(":", 1)[1].strip() for s in lines if "Power Mode" in s), None)
            num = next((s for s in lines if s.isdigit()), None)
            if name or num:
                return f"{name or '?'} ({num})" if num else name
        except Exception:
            pass
    status = Path("/var/lib/nvpmodel/status")
    if status.is_file():
        try:
            return status.read_text().strip()
        except OSError:
            pass
    return "unreadable (Jetson without nvpmodel access)"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("numpy", "torch", "onnx", "onnxruntime", "tensorrt"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except Exception:
                continue
        out[mod] = getattr(m, "__version__", "?")
    return out


def environment(threads: int | None = None) -> dict:
    import torch

    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "threads_requested": threads, "torch_threads": threads or torch.get_num_threads(),
            "gpu": cuda_device_name(), "jetson_power_mode": jetson_power_mode(), "versions": versions()}

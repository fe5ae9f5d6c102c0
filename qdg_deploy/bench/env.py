"""The machine a benchmark ran on: CPU model, threads, GPU, runtime versions, Jetson power mode."""

from __future__ import annotations

import os
import platform
import re
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


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def board_model(root: Path = Path("/")) -> str | None:
    """The device tree's model string (e.g. 'NVIDIA Jetson AGX Orin Developer Kit'), else None."""
    return _read(root / "proc/device-tree/model") or _read(root / "sys/firmware/devicetree/base/model")


def is_jetson(root: Path = Path("/")) -> bool:
    return (root / "etc/nv_tegra_release").exists() or "jetson" in (board_model(root) or "").lower()


def nvpmodel_mode(root: Path = Path("/")) -> str | None:
    """The power mode nvpmodel last set, from its status file ('pmode:0002 ...') named through /etc/nvpmodel.conf
    ('< POWER_MODEL ID=2 NAME=15W >'): e.g. '15W (2)'; the bare id when the conf is unreadable; else None."""
    status = _read(root / "var/lib/nvpmodel/status")
    m = re.search(r"pmode:\s*(\d+)", status or "")
    if not m:
        return None
    mode = int(m.group(1))
    names = dict(re.findall(r"POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+?)\s*>", _read(root / "etc/nvpmodel.conf") or ""))
    return f"{names[str(mode)]} ({mode})" if str(mode) in names else str(mode)


def jetson_clocks_on(root: Path = Path("/")) -> bool | None:
    """Whether jetson_clocks is in effect: it pins every CPU's and the GPU's minimum frequency to the maximum, so
    min == max on all of them means on. None when the frequencies are not readable."""
    pairs = []
    for cpu in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq")):
        pairs.append((_read(cpu / "scaling_min_freq"), _read(cpu / "scaling_max_freq")))
    for dev in sorted((root / "sys/class/devfreq").glob("*")):
        if re.search(r"gpu|ga10b|gv11b|gp10b|gb10b", dev.name):
            pairs.append((_read(dev / "min_freq"), _read(dev / "max_freq")))
    pairs = [p for p in pairs if None not in p]
    if not pairs:
        return None
    return all(lo == hi for lo, hi in pairs)


def jetson_info(root: Path = Path("/")) -> dict | None:
    """{board, nvpmodel_mode, jetson_clocks} on a Jetson (each None when unreadable; nothing is refused for it),
    else None."""
    if not is_jetson(root):
        return None
    return {"board": board_model(root), "nvpmodel_mode": nvpmodel_mode(root), "jetson_clocks": jetson_clocks_on(root)}


def jetson_power_mode() -> str | None:
    """`nvpmodel -q`'s mode on a Jetson (e.g. 'MAXN (0)'), else its status file's, else None."""
    if not is_jetson() and not shutil.which("nvpmodel"):
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
    return nvpmodel_mode() or "unreadable (Jetson without nvpmodel access)"


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

    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "threads_requested": threads,
        "torch_threads": threads or torch.get_num_threads(),
        "gpu": cuda_device_name(),
        "jetson_power_mode": jetson_power_mode(),
        "jetson": jetson_info(),
        "versions": versions(),
    }

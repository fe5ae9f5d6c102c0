"""Run directories: `config.json`, `model.safetensors` (selected weights with quantizer state), `metrics.json`.

`load_run` rebuilds the exact network a run selected, quantized layers included, without executing
anything stored in the run (safetensors only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import QdgError
from .io import atomic_path, read_json, write_json
from .models import build_model
from .quant import Scheme, quantize_model

CONFIG, WEIGHTS, METRICS = "config.json", "model.safetensors", "metrics.json"
RUN_FILES = (CONFIG, WEIGHTS, METRICS)


@dataclass
class Run:
    path: Path
    config: dict
    metrics: dict
    model: nn.Module

    @property
    def scheme(self) -> Scheme | None:
        s = self.config.get("model", {}).get("scheme")
        return Scheme.from_dict(s) if s else None


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))


def save_run(out: Path, config: dict, state: dict, metrics: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG, config)
    save_weights(out / WEIGHTS, state)
    write_json(out / METRICS, metrics)


def model_record(arch: str, input_shape, num_classes: int, scheme: Scheme | None) -> dict:
    """What `build_run_model` needs to rebuild the network; stored under config['model']."""
    return {"arch": arch, "input_shape": list(input_shape), "num_classes": num_classes,
            "scheme": scheme.to_dict() if scheme else None}


def build_run_model(record: dict, float_only: bool = False) -> nn.Module:
    """The network a model record describes (an ensemble record: each member as its own record says, wrapped in
    `ensemble.Ensemble`); float_only leaves every layer float."""
    if record.get("ensemble"):
        from .ensemble import Ensemble
        return Ensemble([build_run_model(r, float_only) for r in record["ensemble"]])
    net = build_model(record["arch"], record["input_shape"][0], record["num_classes"])
    if record.get("scheme") and not float_only:
        quantize_model(net, Scheme.from_dict(record["scheme"]))
    return net


def missing_run_files(path: str | Path, files: tuple[str, ...] = RUN_FILES) -> list[str]:
    """Which of a run directory's files `path` lacks (all of them where it is not a directory)."""
    return [name for name in files if not (Path(path) / name).is_file()]


def check_run_dir(path: str | Path, files: tuple[str, ...] = RUN_FILES, role: str = "") -> Path:
    """`path` as a Path, or a QdgError naming what it lacks; `role` prefixes the message (e.g. "--init ")."""
    missing = missing_run_files(path, files)
    if missing:
        raise QdgError(f"{role}{path} is not a run directory ({', '.join(missing)} missing)")
    return Path(path)


def load_run(path: str | Path) -> Run:
    path = check_run_dir(path)
    config = read_json(path / CONFIG)
    net = build_run_model(config["model"])
    state = load_file(str(path / WEIGHTS))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise QdgError(f"{path / WEIGHTS} does not match the model in {CONFIG}: {str(e).splitlines()[0]}") from None
    net.eval()
    return Run(path, config, read_json(path / METRICS), net)

"""Run directories: `config.json`, `model.safetensors` (selected weights with quantizer state), `metrics.json`.

`load_run` rebuilds the exact network a run selected, quantized layers included, without executing
anything stored in the run (safetensors only).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import QdgError
from .io import atomic_path, current_umask, renamed, writable_folder
from .models import build_model
from .quant import Scheme, quantize_model
from .records import Metrics, RunConfig, read_record_json

CONFIG, WEIGHTS, METRICS = "config.json", "model.safetensors", "metrics.json"
RUN_FILES = (CONFIG, WEIGHTS, METRICS)
CHECKPOINT = "last.ckpt"  # a killed training's state (train/resume.py): its folder is a run that --overwrite replaces


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

    def data(self):
        """The run's data: its data set's splits (as its hyperparameters drew them) and its held-out domain."""
        from .data import run_data

        return run_data(self.config["hparams"], self.config["test_env_index"])


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
        except Exception as e:  # safetensors reports an I/O error (ENOSPC, ...) as its own type: make it an OSError
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


KEPT_FILES = ("train.log",)  # files of the run being written (sweep's log, still open) that survive its replacement


def save_run(out: Path, config: RunConfig | dict, state: dict, metrics: Metrics | dict) -> None:
    """Write the run directory `out` as a whole: every file goes into a temporary sibling folder, which is renamed
    into place; a run already there is moved aside first and removed only once the new one has its name (a failure
    at any point leaves the old run as it was). Files of an earlier run beside its three (exports, eval.json) go
    with it: they describe weights that no longer exist; KEPT_FILES are carried over. `config` and `metrics` are
    written as their records (records.py; a dict is read as one first)."""
    config, metrics = RunConfig.of_any(config), Metrics.of_any(metrics)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = None
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        try:
            config.write(tmp / CONFIG)
            save_weights(tmp / WEIGHTS, state)
            metrics.write(tmp / METRICS)
        except OSError as e:  # name the run directory, not the temporary one
            raise renamed(e, out) from None
        if out.exists():
            for name in KEPT_FILES:
                if (out / name).is_file():
                    _carry(out / name, tmp / name)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:  # put the old run back
                os.replace(old / out.name, out)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def check_out_dir(out: str | Path, overwrite: bool, option: str = "--out") -> Path:
    """Refuse, before any work, an output run directory `save_run` could not or should not replace: a file, a run
    without --overwrite, a folder of other files (it would be replaced whole), a place where nothing can be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise QdgError(f"{option} {out} is a file, not a directory: choose a folder for the run")
    if out.is_dir():
        if any((out / name).exists() for name in (WEIGHTS, METRICS, CONFIG, CHECKPOINT)):
            if not overwrite:
                raise QdgError(f"{out} already holds a run; choose another {option} or pass --overwrite")
        elif any(p.name not in KEPT_FILES for p in out.iterdir()):
            raise QdgError(
                f"{option} {out} holds other files (not a run directory) and would be replaced whole: "
                f"choose another {option}"
            )
    if (blocked := writable_folder(out)) is not None:  # the run is built in a sibling folder (EROFS, EACCES)
        raise QdgError(
            f"{option} {out}: cannot write in {blocked} (read-only, not permitted or not a folder); "
            f"choose another {option}"
        )
    return out


def _carry(src: Path, dst: Path) -> None:
    """A hard link where the file system allows one (an open log keeps writing into the new run), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def model_record(arch: str, input_shape, num_classes: int, scheme: Scheme | None) -> dict:
    """What `build_run_model` needs to rebuild the network; stored under config['model']."""
    return {
        "arch": arch,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "scheme": scheme.to_dict() if scheme else None,
    }


def build_run_model(record: dict, float_only: bool = False) -> nn.Module:
    """The network a model record describes (an ensemble record: each member as its own record says, wrapped in
    `models.ensemble.Ensemble`); float_only leaves every layer float."""
    if record.get("ensemble"):
        from .models.ensemble import Ensemble

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


read_run_json = read_record_json  # the name bench and train import


def load_run(path: str | Path) -> Run:
    path = check_run_dir(path)
    config = RunConfig.read(path / CONFIG).to_json()
    metrics = Metrics.read(path / METRICS).to_json()
    try:
        net = build_run_model(config["model"])
    except QdgError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise QdgError(
            f"{path / CONFIG} does not describe a model ({type(e).__name__}: {e}); the run is damaged: train it again"
        ) from None
    try:
        state = load_file(str(path / WEIGHTS))
    except OSError:
        raise
    except Exception as e:  # safetensors' own error type: a truncated or foreign file
        raise QdgError(
            f"{path / WEIGHTS} is not a readable safetensors file ({str(e).splitlines()[0]}); the run is "
            f"damaged: train it again"
        ) from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise QdgError(f"{path / WEIGHTS} does not match the model in {CONFIG}: {str(e).splitlines()[0]}") from None
    net.eval()
    return Run(path, config, metrics, net)


def run_state(path: Path) -> str:
    """'done' (metrics.json valid, config and weights present), 'broken' (anything else there) or 'absent'."""
    if not path.exists():
        return "absent"
    try:
        m = Metrics.read(path / METRICS)
        ok = isinstance(m.test_acc, (int, float))
    except (OSError, ValueError, QdgError):
        ok = False
    return "done" if ok and (path / CONFIG).is_file() and (path / WEIGHTS).is_file() else "broken"

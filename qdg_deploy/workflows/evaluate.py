"""`qdg-deploy eval`: per-domain accuracy of a saved run, recomputed from its weights."""

from __future__ import annotations

from pathlib import Path

from ..accuracy import domain_metrics
from ..data import run_data
from ..device import resolve_device
from ..errors import QdgError
from ..io import write_json
from ..runs import load_run


def evaluate_onnx(path: Path, json_path: str | Path | None, data_dir: str | None) -> dict:
    """Per-domain accuracy of a bare exported ONNX, its data set, split and input pipeline from its metadata."""
    import numpy as np
    import torch

    from ..export.metadata import config_from_metadata, read_metadata
    from ..ort_session import ort_session

    config = config_from_metadata(read_metadata(path))
    if config is None:
        raise QdgError(
            f"{path} carries no data set in its metadata (exported before qdg-deploy wrote it, or by "
            f"another tool): evaluate its run directory instead"
        )
    hp = {**config["hparams"], **({"data_dir": data_dir} if data_dir else {})}
    data = run_data(hp, config["test_env_index"])
    session = ort_session(path, threads=0)
    name = session.get_inputs()[0].name

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: np.ascontiguousarray(x.numpy(), dtype=np.float32)})[0])

    result = {
        "onnx": str(path),
        "method": config["hparams"].get("method") or "onnx",
        "scheme": config["model"]["scheme"],
        "classes": config["classes"],
        **domain_metrics(predict, data),
        "device": "onnxruntime-cpu",
    }
    write_json(Path(json_path) if json_path else path.with_name(path.stem + ".eval.json"), result)
    return result


def evaluate_run(
    run_dir: str | Path, json_path: str | Path | None = None, device: str = "auto", data_dir: str | None = None
) -> dict:
    """Per-domain accuracy of the run's model, computed on `device` (batches move there, logits come back). An
    exported .onnx instead of a run: run by ONNX Runtime (CPU) on the data set its metadata names (`data_dir`
    where the data now lives elsewhere); the JSON goes beside it (X.eval.json)."""
    if Path(run_dir).suffix.lower() == ".onnx" and Path(run_dir).is_file():
        return evaluate_onnx(Path(run_dir), json_path, data_dir)
    if data_dir is not None:
        raise QdgError("--data-dir applies to an .onnx file: a run directory's data set is its config.json's")
    where = resolve_device(device)
    run = load_run(run_dir)
    result = {
        "run": str(run_dir),
        "method": run.metrics["method"],
        "bits": run.metrics["bits"],
        "scheme": run.metrics["scheme"],
        **domain_metrics(run.model.to(where).eval(), run.data()),
        "device": str(where),
    }
    write_json(Path(json_path) if json_path else Path(run_dir) / "eval.json", result)
    return result

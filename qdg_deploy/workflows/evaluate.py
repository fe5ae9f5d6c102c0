"""`qdg-deploy eval`: per-domain accuracy of a saved run, recomputed from its weights."""

from __future__ import annotations

from pathlib import Path

from ..device import resolve_device
from ..io import write_json
from ..runs import load_run
from ..accuracy import domain_metrics


def evaluate_run(run_dir: str | Path, json_path: str | Path | None = None, device: str = "auto") -> dict:
    """Per-domain accuracy of the run's model, computed on `device` (batches move there, logits come back)."""
    where = resolve_device(device)
    run = load_run(run_dir)
    result = {"run": str(run_dir), "method": run.metrics["method"], "bits": run.metrics["bits"],
              "scheme": run.metrics["scheme"], **domain_metrics(run.model.to(where).eval(), run.data()),
              "device": str(where)}
    write_json(Path(json_path) if json_path else Path(run_dir) / "eval.json", result)
    return result

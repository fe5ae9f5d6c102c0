"""`qdg-deploy bench`: latency, throughput, size and per-domain accuracy of trained / exported models on
every runtime this machine has.

    from qdg_deploy.bench import bench, list_runtimes, results_table, write_plots
    result = bench(["runs/demo/qt-dog", "runs/demo/qt-dog/model.onnx"], batches=[1, 8], duration_s=1)
    # result["records"]: one per (artifact, runtime, batch); result["skipped"]: what was not measured, why

An artifact is a run directory (torch runtimes; ORT/TensorRT use RUN_DIR/model.onnx / model.engine when
present), an `.onnx` or an `.engine`. A file's data set comes from the run directory it sits in (its
parent holding config.json); a bare file gets latency and size only.
"""

from ..timing import LatencyStats, measure, summarize, time_fn
from .artifacts import Artifact, resolve_artifact
from .core import SCHEMA, bench, domain_accuracy, select_runtimes
from .env import environment
from .results import (
    accuracy_table,
    compare,
    compare_table,
    load_result,
    plot_paths,
    results_table,
    runtimes_table,
    skipped_lines,
    write_plots,
)
from .runtimes import (
    COPIES_EXCLUDED,
    COPIES_INCLUDED,
    COPIES_NONE,
    RUNTIMES,
    Runtime,
    Session,
    get_runtime,
    list_runtimes,
    register_runtime,
)

__all__ = [
    "Artifact",
    "COPIES_EXCLUDED",
    "COPIES_INCLUDED",
    "COPIES_NONE",
    "LatencyStats",
    "RUNTIMES",
    "Runtime",
    "SCHEMA",
    "Session",
    "accuracy_table",
    "bench",
    "compare",
    "compare_table",
    "domain_accuracy",
    "environment",
    "get_runtime",
    "list_runtimes",
    "load_result",
    "measure",
    "plot_paths",
    "register_runtime",
    "resolve_artifact",
    "results_table",
    "runtimes_table",
    "select_runtimes",
    "skipped_lines",
    "summarize",
    "time_fn",
    "write_plots",
]

"""The demo's last step: bench each model's deployment artifact and print one final table.

    result = bench_demo({"ERM": "runs/demo/erm", "QT-DoG (W7)": "runs/demo/qt-dog", ...}, out_dir)

Each model is benched as it would ship: its exported ONNX (model.onnx, else model.fp32.onnx, else
model.engine) on every available ONNX/TensorRT runtime. A float run with no export is first exported with
`--format onnx-fp32` (export_float=True); otherwise a run with no export falls back to its PyTorch network. Writes OUT/bench.json and OUT/bench-latency.png, OUT/bench-accuracy.png.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from ..bench.artifacts import ENGINE_NAME, FP32_ONNX_NAME, ONNX_NAME
from ..bench.core import bench
from ..bench.results import write_plots
from ..io import write_json
from ..tables import FitTable, human_bytes, pct


def deployment_artifact(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    for name in (ONNX_NAME, FP32_ONNX_NAME, ENGINE_NAME):
        if (run_dir / name).is_file():
            return run_dir / name
    return run_dir


def _export_float_if_missing(run_dir: Path) -> None:
    """A float run with no export gets model.fp32.onnx (the exporter's onnx-fp32), so that every model of
    the demo is compared on the same runtimes."""
    from ..runs import load_run

    if deployment_artifact(run_dir) != run_dir or load_run(run_dir).scheme is not None:
        return
    from ..export import export_run_dir

    export_run_dir(run_dir, fmt="onnx-fp32", verify=False)


def bench_demo(
    runs: dict[str, str | Path],
    out_dir: str | Path,
    *,
    batches=(1, 32),
    duration_s: float = 1.0,
    warmup_ms: float = 200,
    threads: int | None = None,
    export_float: bool = True,
    console: Console | None = None,
    out: Console | None = None,
) -> dict:
    out = out or Console()
    out_dir = Path(out_dir)
    if export_float:
        for d in runs.values():
            _export_float_if_missing(Path(d))
    arts = {label: deployment_artifact(d) for label, d in runs.items()}
    result = bench(
        list(arts.values()),
        None,
        batches,
        warmup_ms=warmup_ms,
        duration_s=duration_s,
        min_iters=10,
        threads=threads,
        accuracy=True,
        console=console,
    )
    write_json(out_dir / "bench.json", result)
    plots = write_plots(result, out_dir / "bench.png")
    out.print(final_table(result, arts))
    out.print(f"bench: {out_dir / 'bench.json'}, " + ", ".join(str(p) for p in plots))
    return result


def _export_report(path: Path) -> dict:
    """The export report beside an ONNX artifact ({} when there is none)."""
    from ..export import report_name

    rp = report_name(Path(path))
    return json.loads(rp.read_text()) if Path(path).suffix == ".onnx" and rp.is_file() else {}


def _is_float(path: Path, rep: dict) -> bool:
    """Whether an artifact is the float network: an onnx-fp32 export, or any ONNX of a run with no scheme."""
    cfg = Path(path).parent / "config.json"
    if rep.get("format") == "onnx-fp32" or Path(path).name == FP32_ONNX_NAME:
        return True
    return Path(path).suffix == ".onnx" and cfg.is_file() and json.loads(cfg.read_text())["model"].get("scheme") is None


def _float_ref(cols: list[tuple]) -> dict[str, dict]:
    """runtime -> the FP32 artifact's records by batch (the first column that is the float network)."""
    ref = {}
    for _, by_batch, rep, rt, is_float in cols:
        if is_float:
            ref.setdefault(rt, by_batch)
    return ref


def _vs_fp32_rows(t: FitTable, cols: list[tuple], batches) -> None:
    """Speed, throughput and file size relative to the FP32 model on the same runtime; an ensemble of K members
    against K FP32 models (K × the one FP32 model's latency and size), its float counterpart."""
    ref = _float_ref(cols)

    def ratio(fn):
        cells = []
        for _, bb, rep, rt, _ in cols:
            k = (rep.get("ensemble") or {}).get("k", 1)
            v = fn(bb, ref.get(rt), k) if ref.get(rt) else None
            cells.append("—" if v is None else f"{v:.2f}×" + (f" (vs {k} FP32)" if k > 1 else ""))
        return cells

    lo, hi = batches[0], batches[-1]
    t.add_row(
        f"speed vs FP32 b{lo}",
        *ratio(
            lambda bb, r, k: (
                r[lo]["latency_ms"]["mean"] * k / bb[lo]["latency_ms"]["mean"] if lo in bb and lo in r else None
            )
        ),
    )
    t.add_row(
        f"throughput vs FP32 b{hi}",
        *ratio(
            lambda bb, r, k: bb[hi]["throughput_ips"] * k / r[hi]["throughput_ips"] if hi in bb and hi in r else None
        ),
    )
    t.add_row(
        "file vs FP32",
        *ratio(
            lambda bb, r, k: (
                next(iter(bb.values()))["size"]["file_bytes"] / (k * next(iter(r.values()))["size"]["file_bytes"])
            )
        ),
    )


def final_table(result: dict, arts: dict[str, Path]) -> FitTable:
    """Rows: per-domain accuracy of the deployed artifact (held-out marked), latency, throughput, size, each
    against the FP32 model, and the export's agreement with torch; one column per (model, runtime), stacked in as
    many tables as the terminal's width needs."""
    cols = []
    for label, path in arts.items():
        recs = [r for r in result["records"] if r["artifact_path"] == str(path)]
        rep = _export_report(path)
        for rt in dict.fromkeys(r["runtime"] for r in recs):
            by_batch = {r["batch"]: r for r in recs if r["runtime"] == rt}
            cols.append((f"{label}\n{Path(path).name} · {rt}", by_batch, rep, rt, _is_float(path, rep)))
    env = result["environment"]
    threads = result["settings"]["threads"] or env["torch_threads"]
    t = FitTable(
        f"Deployed models — {env['cpu']}" + (f", {env['gpu']}" if env.get("gpu") else "") + f", {threads} threads",
        [("", "left")] + [(c[0], "right") for c in cols],
    )
    if not cols:
        return t
    first = next(iter(cols[0][1].values()))
    acc0 = first.get("accuracy")
    if acc0:
        for d, info in acc0["per_domain"].items():
            label = f"[bold]{d} (held-out) %[/]" if info["held_out"] else f"{d} (val) %"
            cells = []
            for _, by_batch, *_ in cols:
                a = next(iter(by_batch.values())).get("accuracy")
                cells.append(pct(a["per_domain"][d]["acc"]) if a else "—")
            t.add_row(label, *cells, end_section=info["held_out"])
    batches = result["settings"]["batches"]
    for b in batches:
        t.add_row(
            f"latency b{b} mean / p99 ms",
            *[
                f"{r['latency_ms']['mean']:.2f} / {r['latency_ms']['p99']:.2f}" if (r := bb.get(b)) else "—"
                for _, bb, *_ in cols
            ],
        )
    b = batches[-1]
    t.add_row(
        f"throughput b{b} img/s", *[f"{r['throughput_ips']:.0f}" if (r := bb.get(b)) else "—" for _, bb, *_ in cols]
    )
    sizes = [next(iter(bb.values()))["size"] for _, bb, *_ in cols]
    t.add_row("file", *[human_bytes(s["file_bytes"]) for s in sizes])
    t.add_row("packed", *[human_bytes(s["packed_bytes"]) if s.get("packed_bytes") else "—" for s in sizes])
    _vs_fp32_rows(t, cols, batches)
    t.add_row(
        "agreement with torch",
        *[
            f"{rep['top1_agreement']:.4f} ({rep.get('graph', 'exact')})" if "top1_agreement" in rep else "—"
            for _, _, rep, *_ in cols
        ],
    )
    return t

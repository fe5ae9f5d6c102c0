"""`qdg-deploy demo`: the main job on the embedded rotated-MNIST, start to finish on a laptop CPU."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from .tables import per_domain_table
from .runs import load_run
from .train import resolve_hparams, train_one
from .evaluation import make_progress


def w8a8_scheme() -> str:
    """TensorRT's scheme where TensorRT is installed, else ONNX Runtime's (the runtime this machine has)."""
    try:
        import tensorrt  # noqa: F401
        return "trt"
    except ImportError:
        return "ort"


def demo_models() -> dict[str, dict]:
    """Label → training overrides for each model the demo trains."""
    w8 = w8a8_scheme()
    return {"ERM": dict(method="erm"),
            "QT-DoG (W7)": dict(method="qtdog", scheme="paper"),
            f"QT-DoG W8A8 ({w8})": dict(method="qtdog", scheme=w8)}


def run_demo(out_dir: Path, *, steps: int | None = None, seed: int = 0, test_env: str = "75",
             console: Console | None = None, out: Console | None = None) -> dict:
    out = out or Console()
    start = time.perf_counter()
    results, sizes, dirs = {}, {}, {}
    with make_progress(console) as progress:
        for label, overrides in demo_models().items():
            hp = resolve_hparams("rotated-mnist", steps=steps, seed=seed, test_env=test_env, **overrides)
            run_dir = Path(out_dir) / label.split(" (")[0].lower().replace(" ", "-").replace("-(", "-")
            results[label] = train_one(hp, run_dir, console=console, overwrite=True, progress=progress)
            sizes[label] = load_run(run_dir).config["size"]
            dirs[label] = run_dir
    out.print(per_domain_table(results, sizes, title=f"rotated-MNIST (embedded), seed {seed}: accuracy (%) per "
                               f"domain, held-out {test_env}°"))
    exports = export_step(dirs, console=console, out=out)
    from .bench.demo import bench_demo  # bench each exported model, one final table
    bench = bench_demo(dirs, out_dir, console=console, out=out)
    out.print(f"runs in {out_dir}; {time.perf_counter() - start:.0f} s in all")
    return {"results": results, "sizes": sizes, "dirs": {k: str(v) for k, v in dirs.items()}, "exports": exports,
            "bench": bench}


def export_step(dirs: dict[str, Path], *, console: Console | None = None, out: Console | None = None) -> dict:
    """Export every quantized run to QDQ ONNX and print its top-1 agreement with the torch model (ORT CPU)."""
    from .export import export_run

    out = out or Console()
    reports = {}
    for label, run_dir in dirs.items():
        scheme = load_run(run_dir).scheme
        if scheme is None:
            continue
        target = "tensorrt" if scheme.name == "trt" else "ort"
        r = export_run(run_dir, target=target, console=console)
        reports[label] = r
        out.print(f"{label}: {r['path']} ({r['size_ratio']:.2f}× FP32 ONNX, packed {r['packed_ratio']:.2f}×), "
                  f"--target {target}: top-1 agreement with torch {r['top1_agreement']:.4f} over {r['n_samples']} "
                  f"samples, max |Δlogit| {r['max_abs_diff']:.2g}", highlight=False)
    return reports

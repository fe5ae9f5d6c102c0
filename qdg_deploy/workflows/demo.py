"""`qdg-deploy demo`: the main job on the embedded rotated-MNIST, start to finish on a laptop CPU."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from ..accuracy import make_progress
from ..runs import load_run
from ..tables import models_table, with_unaveraged
from ..train import default_hparams, resolve_hparams, train_one


def w8a8_scheme() -> str:
    """TensorRT's scheme where TensorRT is installed, else ONNX Runtime's (the runtime this machine has)."""
    try:
        import tensorrt  # noqa: F401

        return "trt"
    except ImportError:
        return "ort"


def demo_models() -> dict[str, dict]:
    """Directory name → (label, training overrides) of each model the demo trains. Every run averages with SWAD and
    keeps its result without averaging too; the two QT-DoG W7 seeds make the EoQ."""
    w8 = w8a8_scheme()
    return {
        "erm": ("ERM", dict(method="erm", swad=True)),
        "qtdog-w7": ("QT-DoG W7", dict(method="qtdog", scheme="paper")),
        "qtdog-w7-seed1": ("QT-DoG W7 (seed+1)", dict(method="qtdog", scheme="paper", seed_offset=1)),
        "qtdog-w8a8": (f"QT-DoG W8A8 ({w8})", dict(method="qtdog", scheme=w8)),
    }


def train_step(out_dir: Path, steps: int | None, seed: int, test_env: str, console=None) -> tuple[dict, dict]:
    """Train the demo's models; returns (label → run dir, label → metrics) with a row per run (SWAD) preceded by
    its "LABEL w/o SWAD" row (tables.with_unaveraged), and the EoQ of the two QT-DoG W7 seeds."""
    from .ensemble import build_ensemble

    dirs, results = {}, {}
    with make_progress(console) as progress:
        for name, (label, overrides) in demo_models().items():
            overrides = dict(overrides)
            run_seed = seed + overrides.pop("seed_offset", 0)
            hp = resolve_hparams("rotated-mnist", steps=steps, seed=run_seed, test_env=test_env, **overrides)
            m = train_one(hp, Path(out_dir) / name, console=console, overwrite=True, progress=progress)
            dirs[name] = Path(out_dir) / name
            results.update(with_unaveraged({label: m}))
    dirs["eoq"] = Path(out_dir) / "eoq"
    results["EoQ(2) W7"] = build_ensemble([dirs["qtdog-w7"], dirs["qtdog-w7-seed1"]], dirs["eoq"], overwrite=True)
    return dirs, results


def run_demo(
    out_dir: Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    test_env: str = "75",
    console: Console | None = None,
    out: Console | None = None,
) -> dict:
    out = out or Console()
    start = time.perf_counter()
    dirs, results = train_step(Path(out_dir), steps, seed, test_env, console)
    arch = default_hparams("rotated-mnist")["arch"]
    out.print(models_table(results, title=f"rotated-MNIST (embedded), {arch}, held-out {test_env}°, seed {seed}"))
    shipped = {
        "ERM": dirs["erm"],
        "QT-DoG W7": dirs["qtdog-w7"],
        demo_models()["qtdog-w8a8"][0]: dirs["qtdog-w8a8"],
        "EoQ(2) W7": dirs["eoq"],
    }
    exports = export_step(shipped, console=console, out=out)
    from .demo_bench import bench_demo  # bench each exported model, one final table

    bench = bench_demo(shipped, out_dir, console=console, out=out)
    out.print(f"runs in {out_dir}; {time.perf_counter() - start:.0f} s in all")
    return {"results": results, "dirs": {k: str(v) for k, v in dirs.items()}, "exports": exports, "bench": bench}


def export_step(dirs: dict[str, Path], *, console: Console | None = None, out: Console | None = None) -> dict:
    """Export every quantized run to QDQ ONNX and print its top-1 agreement with the torch model (ORT CPU)."""
    from ..export import export_run_dir

    out = out or Console()
    reports = {}
    for label, run_dir in dirs.items():
        scheme = load_run(run_dir).scheme
        if scheme is None:
            continue
        target = "tensorrt" if scheme.name == "trt" else "ort"
        r = export_run_dir(run_dir, target=target, console=console)
        reports[label] = r
        out.print(
            f"{label}: {r['path']} ({r['size_ratio']:.2f}× FP32 ONNX, packed {r['packed_ratio']:.2f}×), "
            f"--target {target}: top-1 agreement with torch {r['top1_agreement']:.4f} over {r['n_samples']} "
            f"samples, max |Δlogit| {r['max_abs_diff']:.2g}",
            highlight=False,
        )
    return reports

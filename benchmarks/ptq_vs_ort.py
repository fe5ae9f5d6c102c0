"""Our post-training quantization (`qdg-deploy calibrate`) against ONNX Runtime's `quantize_static`, printed as JSON.

Same float network (an ERM run on the embedded rotated-MNIST, held-out domain 75°, trained here unless --run names
one), same calibration images (training domains' `in` splits only: calibration.run.calibration_batches), same held-out
domain. Each side picks its best calibration method by training-domain validation accuracy (never the held-out
domain): ours among minmax / percentile / entropy / mse, ORT's among MinMax / Entropy / Percentile. Both models are
then scored in ONNX Runtime CPU on every domain and timed there, interleaved in blocks (export.variants.ort_latency_ms),
at batch 1 and 32; ours both as exported (`--graph exact`, the default) and as `--graph lean`.

Targets (issue 18): our held-out accuracy ≥ ORT's; our latency ≤ ORT's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx
import torch
from rich.console import Console

from qdg_deploy.accuracy import domain_counts
from qdg_deploy.bench.ort_static import ORT_METHODS, ort_quantize_static
from qdg_deploy.calibrate import ACT_METHODS
from qdg_deploy.calibrate.run import PtqOptions, calibrate_run, calibration_batches
from qdg_deploy.data import run_data
from qdg_deploy.export import export_run_dir, ort_session
from qdg_deploy.export.onnx_writer import lower_to_onnx
from qdg_deploy.export.variants import ort_latency_ms
from qdg_deploy.runs import load_run

LOG = Console(stderr=True)


def train_float(out: Path, steps: int | None) -> Path:
    from qdg_deploy.train import resolve_hparams, train

    hp = resolve_hparams("rotated-mnist", method="erm", test_env="75", steps=steps)
    train(hp, out, console=LOG)
    return out


def ort_scores(path: Path, data, threads: int) -> dict:
    sess = ort_session(str(path), threads=threads, level="all")
    r = domain_counts(lambda x: sess.run(None, {"input": x})[0], data, batch=256)
    return {"val_acc": round(r["val_acc"], 4), "heldout_acc": round(r["test_acc"], 4)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=None, help="A float run to quantize (default: train ERM here).")
    ap.add_argument("--steps", type=int, default=None, help="Training steps when training here (default 300).")
    ap.add_argument("--num-batches", type=int, default=16, help="Calibration batches of 64 images.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30, help="Latency: rounds of interleaved blocks.")
    ap.add_argument("--out", type=Path, default=None, help="Keep the runs and ONNX files here.")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from qdg_deploy.bench.env import cpu_model

    with tempfile.TemporaryDirectory() as tmp:
        d = a.out or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        run_dir = a.run or train_float(d / "float", a.steps)
        run = load_run(run_dir)
        data = run_data(run.config["hparams"], run.config["test_env_index"])
        calib = torch.cat(calibration_batches(data, a.num_batches, run.config["hparams"]["seed"])).numpy()

        ours = {}
        for m in ACT_METHODS:
            calibrate_run(
                run_dir, d / f"ptq_{m}", PtqOptions(method=m, num_batches=a.num_batches), overwrite=True, console=LOG
            )
            rep = export_run_dir(d / f"ptq_{m}", out=d / f"ptq_{m}.onnx", console=LOG)
            ours[m] = {
                **ort_scores(d / f"ptq_{m}.onnx", data, a.threads),
                "top1_agreement_with_torch": rep["top1_agreement"],
            }
        export_run_dir(run_dir, fmt="onnx-fp32", out=d / "fp32.onnx")
        theirs = {}
        for m in ORT_METHODS:
            ort_quantize_static(d / "fp32.onnx", d / f"qs_{m}.onnx", calib, method=m, batch=64)
            theirs[m] = ort_scores(d / f"qs_{m}.onnx", data, a.threads)
        best_ours = max(ours, key=lambda m: ours[m]["val_acc"])
        best_theirs = max(theirs, key=lambda m: theirs[m]["val_acc"])
        shape = run.config["model"]["input_shape"]
        lean = lower_to_onnx(load_run(d / f"ptq_{best_ours}").model, shape, graph="lean").proto
        protos = {
            "ours": onnx.load(str(d / f"ptq_{best_ours}.onnx")),
            "ours_lean": lean,
            "quantize_static": onnx.load(str(d / f"qs_{best_theirs}.onnx")),
            "fp32": onnx.load(str(d / "fp32.onnx")),
        }
        latency = {
            f"batch{b}": ort_latency_ms(protos, shape, threads=a.threads, batch=b, rounds=a.rounds) for b in (1, 32)
        }
        fp32 = ort_scores(d / "fp32.onnx", data, a.threads)
    acc_ok = ours[best_ours]["heldout_acc"] >= theirs[best_theirs]["heldout_acc"]
    ratios = {b: round(v["ours"] / v["quantize_static"], 3) for b, v in latency.items()}
    lean_ratios = {b: round(v["ours_lean"] / v["quantize_static"], 3) for b, v in latency.items()}
    result = {
        "cpu": cpu_model(),
        "threads": a.threads,
        "run": str(run_dir),
        "arch": run.config["model"]["arch"],
        "calibration_images": len(calib),
        "calibration_domains": data.training_names,
        "heldout_domain": data.heldout.name,
        "fp32": fp32,
        "ours": ours,
        "quantize_static": theirs,
        "selected": {"ours": best_ours, "quantize_static": best_theirs, "by": "training-domain validation"},
        "latency_ms": latency,
        "latency_ours_over_quantize_static": ratios,
        "latency_ours_lean_over_quantize_static": lean_ratios,
        "targets": {
            "accuracy_ours_ge_ort": {
                "ours": ours[best_ours]["heldout_acc"],
                "ort": theirs[best_theirs]["heldout_acc"],
                "holds": acc_ok,
            },
            **{f"latency_{b}_ours_le_ort": {"ratio": r, "holds": r <= 1.0} for b, r in ratios.items()},
        },
    }
    result["all_targets_hold"] = all(t["holds"] for t in result["targets"].values())
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)

"""ORT-CPU latency of our W8A8 `ort` export of mobile CNNs against ONNX Runtime's quantize_static, printed as JSON.

    python benchmarks/mobile_latency.py [--models mobilenet_v3_large,efficientnet_b0] [--size 224] [--runs 40]

For torchvision's mobilenet_v3_large and efficientnet_b0 (random init, 1000 classes, 3×size²): the float network
exported as FP32 ONNX; quantize_static on that file (QDQ, per-channel int8 weights, uint8 activations, MinMax, the
project's competitor setup: qdg_deploy/bench/ort_static.py); our `ort` scheme on the same float network, calibrated
(minmax) on the same images and exported exactly. All three are timed in one process, 2 intra-op threads, thread
spinning off in every session (`session.intra_op.allow_spinning` = "0": a spinning session's threads would steal
the cores of the next one), in interleaved blocks (rounds of `--block` runs per model, each block's first run
dropped, each round starting one model later), at batch 1 and 8. Ratios between models of one interleaved run
are what count on a shared machine; absolute milliseconds move with the load.

Target (issue 29): ours ≤ 1.05 × quantize_static at batch 1 and 8; the ratio to FP32 is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision

import qdg_deploy
from qdg_deploy.bench.ort_static import ort_quantize_static
from qdg_deploy.export import export_onnx
from qdg_deploy.ort_session import ort_session


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def interleaved_ms(paths: dict[str, Path], shape, batch: int, threads: int, rounds: int, block: int) -> dict:
    sessions = {k: session(p, threads) for k, p in paths.items()}
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    keys = list(sessions)
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            s, name = sessions[k], sessions[k].get_inputs()[0].name
            for i in range(block):
                t0 = time.perf_counter()
                s.run(None, {name: x})
                if i:
                    times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def ops_after_optimization(path: Path, d: Path) -> dict:
    opt = d / (path.stem + ".opt.onnx")
    ort_session(str(path), level="all", optimized_path=str(opt))
    return dict(Counter(n.op_type for n in onnx.load(str(opt)).graph.node).most_common())


def write_models(name: str, size: int, calib: torch.Tensor, d: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    net = torchvision.models.get_model(name, weights=None, num_classes=1000).eval()
    shape = (3, size, size)
    paths = {
        "fp32": d / f"{name}_fp32.onnx",
        "quantize_static": d / f"{name}_qs.onnx",
        "ours_ort": d / f"{name}_ours.onnx",
        "ours_ort_lean": d / f"{name}_ours_lean.onnx",
    }
    export_onnx(net, shape, paths["fp32"], fp32=True)
    ort_quantize_static(paths["fp32"], paths["quantize_static"], calib.numpy())
    q = qdg_deploy.quantize(net, "ort")
    qdg_deploy.calibrate(q, [calib[i : i + 2] for i in range(0, len(calib), 2)], "minmax")
    export_onnx(q, shape, paths["ours_ort"], target="ort")
    export_onnx(q, shape, paths["ours_ort_lean"], target="ort", graph="lean")  # ONNX's own activation ops
    return paths


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mobilenet_v3_large,efficientnet_b0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=40, help="timed runs per model and batch")
    ap.add_argument("--block", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--out", type=Path, default=None, help="keep the ONNX files here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from qdg_deploy.bench.env import cpu_model

    res = {
        "cpu": cpu_model(),
        "threads": a.threads,
        "spinning": "off",
        "runs": a.runs,
        "block": a.block,
        "note": "shared CPU: compare ratios within one interleaved run",
    }
    rounds = -(-a.runs // (a.block - 1))
    calib = torch.rand(8, 3, a.size, a.size, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        d = a.out or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        for name in a.models.split(","):
            paths = write_models(name, a.size, calib, d)
            r = {"median_ms": {}, "ours_vs_quantize_static": {}, "speedup_vs_fp32": {}}
            for b in map(int, a.batches.split(",")):
                m = interleaved_ms(paths, (3, a.size, a.size), b, a.threads, rounds, a.block)
                r["median_ms"][f"batch{b}"] = m
                r["ours_vs_quantize_static"][f"batch{b}"] = round(m["ours_ort"] / m["quantize_static"], 3)
                r.setdefault("ours_lean_vs_quantize_static", {})[f"batch{b}"] = round(
                    m["ours_ort_lean"] / m["quantize_static"], 3
                )
                r["speedup_vs_fp32"][f"batch{b}"] = {k: round(m["fp32"] / v, 3) for k, v in m.items()}
            r["target_holds"] = all(v <= 1.05 for v in r["ours_vs_quantize_static"].values())
            r["ops_after_optimization"] = {k: ops_after_optimization(p, d) for k, p in paths.items()}
            res[name] = r
            print(json.dumps({name: r}), file=sys.stderr, flush=True)
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    sys.exit(main() and 0)

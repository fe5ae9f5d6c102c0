"""ORT-CPU latency of our 8-bit QDQ export vs ORT FP32 and vs ORT's own quantize_static, printed as JSON.

    python benchmarks/export_latency.py [--runs 30] [--threads 2] [--size 224] [--out DIR]

ResNet-18, 7 classes, random weights, batch 1. Our quantizers are initialized by one calibration forward on
random data; quantize_static calibrates on the same random data (QDQ, per-channel, U8S8). Latencies are
medians over interleaved rounds (the machine may be shared); each round runs every model for a block of
`--block` consecutive runs and drops the block's first: ORT's worker threads spin for a while after a run, and
right after a switch they would still be spinning for the previous session, on the same two cores.

`paper` (W7 weight-only) should run at FP32's latency: ORT folds its codes into float weights at load.
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

from qdg_deploy.export import export_onnx, ort_session
from qdg_deploy.models import build_model
from qdg_deploy.quant import get_scheme, quantize_model, strip_quantizers


def model_for(scheme: str | None, calib: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model("resnet18", 3, 7)
    if scheme:
        quantize_model(m, get_scheme(scheme))
    m.eval()
    with torch.no_grad():
        m(calib)
    return m


def ort_quantize_static(fp32_path: Path, out: Path, calib: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def fused_ops(path: Path, d: Path) -> dict:
    opt = d / (path.stem + ".opt.onnx")
    ort_session(str(path), level="extended", optimized_path=str(opt))
    c = Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    return {k: c[k] for k in ("QLinearConv", "Conv", "FusedConv", "QLinearAdd", "Add", "QGemm", "Gemm") if c[k]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30, help="Timed runs per model.")
    ap.add_argument("--block", type=int, default=10, help="Consecutive runs per model per round (first dropped).")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", type=Path, default=None, help="Keep the ONNX files here (default: a temp dir).")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(1)
    calib = torch.rand(8, 3, a.size, a.size, generator=g)
    shape = (3, a.size, a.size)
    with tempfile.TemporaryDirectory() as tmp:
        d = a.out or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        paths, infos = {}, {}
        for label, scheme, target in (("ours_ort_scheme_target_ort", "ort", "ort"),
                                      ("ours_trt_scheme_target_ort", "trt", "ort"),
                                      ("ours_trt_scheme_target_tensorrt", "trt", "tensorrt"),
                                      ("ours_paper_scheme_target_ort", "paper", "ort")):  # W7 weight-only
            info = export_onnx(model_for(scheme, calib), shape, d / f"{label}.onnx", target=target)
            paths[label], infos[label] = d / f"{label}.onnx", info
        fp32 = strip_quantizers(model_for(None, calib))
        export_onnx(fp32, shape, d / "fp32.onnx", fp32=True)
        paths["ort_fp32"] = d / "fp32.onnx"
        ort_quantize_static(paths["ort_fp32"], d / "quantize_static.onnx", calib.numpy())
        paths["ort_quantize_static"] = d / "quantize_static.onnx"

        sessions = {k: ort_session(str(p), threads=a.threads, level="all") for k, p in paths.items()}
        x = {"input": np.random.default_rng(0).random((1, *shape), dtype=np.float32)}
        times = {k: [] for k in sessions}
        for s in sessions.values():
            for _ in range(3):
                s.run(None, x)
        block = max(a.block, 2)
        while min(len(v) for v in times.values()) < a.runs:  # interleaved: outside load hits every model alike
            for k, s in sessions.items():
                for i in range(block):
                    t0 = time.perf_counter()
                    s.run(None, x)
                    if i:
                        times[k].append((time.perf_counter() - t0) * 1000)
        med = {k: round(statistics.median(v), 2) for k, v in times.items()}
        result = {
            "model": "resnet18", "classes": 7, "input": [1, *shape], "threads": a.threads, "runs": a.runs, "block": block,
            "median_ms": med,
            "speedup_vs_fp32": {k: round(med["ort_fp32"] / v, 2) for k, v in med.items()},
            "ratio_vs_quantize_static": {k: round(v / med["ort_quantize_static"], 2) for k, v in med.items()},
            "file_bytes": {k: p.stat().st_size for k, p in paths.items()},
            "ort_ops_after_fusion": {k: fused_ops(p, d) for k, p in paths.items()},
            "ours_unfused_layers": {k: i.get("ort_unfused_layers") for k, i in infos.items()},
            "targets": {"speedup_vs_fp32_min": 1.8, "ratio_vs_quantize_static_max": 1.0,
                        "paper_latency_vs_fp32_max": 1.05},  # weight-only: computes in float, as fast as FP32
        }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)

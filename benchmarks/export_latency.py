"""ORT-CPU latency of our exports against ORT FP32 and ORT's own quantize_static, printed as JSON.

    python benchmarks/export_latency.py [--runs 20] [--threads 2] [--block 10] [--out DIR] [--only embedded|resnet18]

Two groups, each timed in one interleaved run (rounds of `--block` consecutive runs per model, each block's first
dropped: ORT's worker threads spin for a while after a run, and right after a switch they would still be spinning
for the previous session, on the same cores; outside load then hits every model alike):

* embedded: the demo's network (digits-resnet, 1×28×28, 10 classes) at batch 1 and 32: FP32, W8A8 (`ort`
  scheme) and W7 weight-only (`paper`), each quantized one as the exact and the lean graph (`--graph`);
* resnet18: ResNet-18, 3×224×224, 7 classes, at batch 1 and 8: FP32, quantize_static (QDQ, per-channel, U8S8,
  calibrated on the same random data), and our `ort` export, exact and lean.
* deit (`--only deit`, issue 30): DeiT-Small (timm deit_small_patch16_224, 3×224×224, 1000 classes) at batch 1
  and 8, the same four models, with ORT's thread spinning off (session.intra_op.allow_spinning = 0).

Weights are random; our quantizers are initialized by one calibration forward on random data. Latency does not
depend on the values. The JSON gives medians, ratios, ORT's fused ops, and each acceptance target with its verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch

from qdg_deploy.bench.ort_static import ort_quantize_static
from qdg_deploy.export import export_onnx, ort_session
from qdg_deploy.export.variants import ort_latency_ms
from qdg_deploy.models import build_model
from qdg_deploy.quant import get_scheme, quantize_model, strip_quantizers

GROUPS = {
    "embedded": {"arch": "digits-resnet", "shape": (1, 28, 28), "classes": 10, "batches": (1, 32)},
    "resnet18": {"arch": "resnet18", "shape": (3, 224, 224), "classes": 7, "batches": (1, 8)},
    "deit": {
        "arch": "timm:deit_small_patch16_224",
        "shape": (3, 224, 224),
        "classes": 1000,
        "batches": (1, 8),
        "spinning": False,
    },
}
FUSED = (
    "QLinearConv",
    "Conv",
    "FusedConv",
    "QLinearAdd",
    "Add",
    "QGemm",
    "Gemm",
    "QLinearGlobalAveragePool",
    "DequantizeLinear",
)


def model_for(arch: str, shape, classes: int, scheme: str | None, calib: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch.startswith("timm:") and arch not in __import__("qdg_deploy.models").models.available_models():
        import timm  # until the model zoo's build_model("timm:NAME") is merged

        m = timm.create_model(arch.removeprefix("timm:"), in_chans=shape[0], num_classes=classes)
    else:
        m = build_model(arch, shape[0], classes)
    if scheme:
        quantize_model(m, get_scheme(scheme))
    m.eval()
    with torch.no_grad():
        m(calib)
    return m


def fused_ops(path: Path, d: Path) -> dict:
    """ORT's ops after its optimizations (level extended: the layout-independent fusions)."""
    opt = d / (path.stem + ".opt.onnx")
    ort_session(str(path), level="extended", optimized_path=str(opt))
    c = Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    return {k: c[k] for k in FUSED if c[k]}


def write_models(group: str, d: Path) -> dict[str, Path]:
    g = GROUPS[group]
    calib = torch.rand(8, *g["shape"], generator=torch.Generator().manual_seed(1))
    paths = {}
    fp32 = strip_quantizers(model_for(g["arch"], g["shape"], g["classes"], None, calib))
    paths["fp32"] = d / f"{group}_fp32.onnx"
    export_onnx(fp32, g["shape"], paths["fp32"], fp32=True)
    schemes = {
        "embedded": (("w8a8_ort", "ort"), ("w7_paper", "paper")),
        "resnet18": (("ours_ort", "ort"),),
        "deit": (("ours_ort", "ort"),),
    }[group]
    for label, scheme in schemes:
        m = model_for(g["arch"], g["shape"], g["classes"], scheme, calib)
        for graph in ("exact", "lean"):
            paths[f"{label}_{graph}"] = d / f"{group}_{label}_{graph}.onnx"
            export_onnx(m, g["shape"], paths[f"{label}_{graph}"], graph=graph)
    if group in ("resnet18", "deit"):
        paths["quantize_static"] = d / f"{group}_quantize_static.onnx"
        ort_quantize_static(paths["fp32"], paths["quantize_static"], calib.numpy())
    return paths


def latency_no_spinning(
    files: dict[str, str], shape, *, threads: int, batch: int, rounds: int, block: int
) -> dict[str, float]:
    """ort_latency_ms's interleaved blocks, with ORT's intra-op threads not spinning between runs (a CPU shared
    with other work: a spinning pool would burn the cores the other sessions need)."""
    import statistics
    import time

    import onnxruntime as ort

    sessions = {}
    for k, f in files.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[k] = ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])
    x = {"input": np.random.default_rng(0).random((batch, *shape), dtype=np.float32)}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    keys = list(sessions)
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            for i in range(block):
                t0 = time.perf_counter()
                sessions[k].run(None, x)
                if i:
                    times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: round(statistics.median(v), 4) for k, v in times.items()}


def op_time_share(path: Path, shape, batch: int, threads: int, runs: int = 20) -> dict[str, float]:
    """Share of ORT's kernel time per op type (ORT's own profiler, `runs` runs): for quantize_static's model,
    QLinearConv's share bounds how far any graph running the same QLinearConv kernels can get below it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.enable_profiling, so.log_severity_level = threads, True, 3
    so.profile_file_prefix = str(path.with_suffix(""))
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = {"input": np.random.default_rng(0).random((batch, *shape), dtype=np.float32)}
    for _ in range(runs):
        s.run(None, x)
    events = json.loads(Path(s.end_profiling()).read_text())
    by_op = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    return {op: round(t / total, 4) for op, t in by_op.most_common()}


def verdicts(group: str, med: dict[int, dict]) -> dict:
    """Each acceptance target of issue 16 with the measured ratio and whether it holds."""
    out = {}
    for b, m in med.items():
        if group == "embedded":
            out[f"w8a8_speedup_vs_fp32_b{b}"] = {
                "value": round(m["fp32"] / m["w8a8_ort_exact"], 3),
                "min": 1.8 if b >= 32 else 1.0,
            }
            out[f"w7_latency_vs_fp32_b{b}"] = {"value": round(m["w7_paper_exact"] / m["fp32"], 3), "max": 1.05}
        elif group == "deit":  # issue 30
            out[f"ours_vs_quantize_static_b{b}"] = {
                "value": round(m["ours_ort_exact"] / m["quantize_static"], 3),
                "max": 1.05,
            }
            out[f"ours_speedup_vs_fp32_b{b}"] = {"value": round(m["fp32"] / m["ours_ort_exact"], 3), "min": 1.0}
        else:
            out[f"ours_vs_quantize_static_b{b}"] = {
                "value": round(m["ours_ort_exact"] / m["quantize_static"], 3),
                "max": 0.85,
            }
            out[f"ours_speedup_vs_fp32_b{b}"] = {"value": round(m["fp32"] / m["ours_ort_exact"], 3), "min": 2.2}
    for v in out.values():
        v["holds"] = bool(v["value"] >= v["min"] if "min" in v else v["value"] <= v["max"])
    return out


def run_group(group: str, d: Path, a) -> dict:
    g = GROUPS[group]
    paths = write_models(group, d)
    rounds = -(-a.runs // (a.block - 1))  # each block's first run is dropped
    files = {k: str(p) for k, p in paths.items()}
    timer = ort_latency_ms if g.get("spinning", True) else latency_no_spinning
    med = {b: timer(files, g["shape"], threads=a.threads, batch=b, rounds=rounds, block=a.block) for b in g["batches"]}
    lean = {
        b: {
            k.removesuffix("_lean"): round(m[k] / m[k.removesuffix("_lean") + "_exact"], 3)
            for k in m
            if k.endswith("_lean")
        }
        for b, m in med.items()
    }
    extra = {}
    if group == "resnet18":  # where the time goes in both models (ORT's profiler, batch 1)
        extra["kernel_time_share_batch1"] = {
            k: op_time_share(paths[k], g["shape"], 1, a.threads) for k in ("quantize_static", "ours_ort_exact")
        }
    return {
        **extra,
        "arch": g["arch"],
        "input": list(g["shape"]),
        "classes": g["classes"],
        "median_ms": {f"batch{b}": m for b, m in med.items()},
        "speedup_vs_fp32": {f"batch{b}": {k: round(m["fp32"] / v, 3) for k, v in m.items()} for b, m in med.items()},
        "lean_vs_exact_latency": {f"batch{b}": v for b, v in lean.items()},
        "file_bytes": {k: p.stat().st_size for k, p in paths.items()},
        "ort_ops_after_fusion": {k: fused_ops(p, d) for k, p in paths.items()},
        "targets": verdicts(group, med),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20, help="Timed runs per model and batch.")
    ap.add_argument("--block", type=int, default=10, help="Consecutive runs per model per round (first dropped).")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=sorted(GROUPS), default=None, help="One group only.")
    ap.add_argument("--out", type=Path, default=None, help="Keep the ONNX files here (default: a temp dir).")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from qdg_deploy.bench.env import cpu_model

    result = {"cpu": cpu_model(), "threads": a.threads, "runs": a.runs, "block": max(a.block, 2)}
    a.block = max(a.block, 2)
    with tempfile.TemporaryDirectory() as tmp:
        d = a.out or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        for group in [a.only] if a.only else list(GROUPS):
            result[group] = run_group(group, d, a)
    result["all_targets_hold"] = all(
        t["holds"] for gr in GROUPS if gr in result for t in result[gr]["targets"].values()
    )
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)

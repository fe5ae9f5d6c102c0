"""ms per training step, float vs quantized (QT-DoG schemes), for mnist-cnn and digits-resnet at 28 px and resnet18
at 64 px.

Prints JSON. Target: quantized ≤ 1.3× float. Each step is forward + backward + Adam on one batch;
the median of `--iters` steps after `--warmup` is reported, variants interleaved.

    python benchmarks/train_step.py [--iters 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from qdg_deploy.models import build_model
from qdg_deploy.quant import get_scheme, quantize_model

# arch, channels, px, batch. 80 = the demo's 16 per domain × 5 domains; 96 = the QT-DoG protocol's 32 per
# domain × 3 training domains. Weight fake-quant costs the same at any batch, so the ratio falls as batch grows.
CASES = [("mnist-cnn", 1, 28, 80), ("digits-resnet", 1, 28, 80), ("resnet18", 3, 64, 32), ("resnet18", 3, 64, 96)]


VARIANTS = (None, "paper", "trt", "ort")


def make_step(arch, ch, px, batch, scheme):
    """A closure running one training step of a fresh model (float if scheme is None)."""
    torch.manual_seed(0)
    net = build_model(arch, ch, 10)
    x = torch.rand(batch, ch, px, px)
    y = torch.randint(0, 10, (batch,))
    if scheme:
        quantize_model(net, get_scheme(scheme))
        net(x)  # initialize activation steps from data, as training does at q_steps
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def measure(arch, ch, px, batch, iters, warmup):
    """Median ms per step for each variant; the variants run round-robin so that load from other
    processes falls on all of them alike."""
    steps = {v: make_step(arch, ch, px, batch, v) for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    for i in range(warmup + iters):
        for v, step in steps.items():
            t = time.perf_counter()
            step()
            if i >= warmup:
                times[v].append((time.perf_counter() - t) * 1000)
    return {v: statistics.median(ts) for v, ts in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for arch, ch, px, batch in CASES:
        ms = measure(arch, ch, px, batch, args.iters, args.warmup)
        base = ms[None]
        row = {"arch": arch, "px": px, "batch": batch, "float_ms": round(base, 2)}
        for scheme in VARIANTS[1:]:
            row[f"{scheme}_ms"] = round(ms[scheme], 2)
            row[f"{scheme}_ratio"] = round(ms[scheme] / base, 3)
        results.append(row)
    worst = max(r[f"{s}_ratio"] for r in results for s in ("paper", "trt", "ort"))
    print(json.dumps({"threads": args.threads, "target_ratio": 1.3, "worst_ratio": worst,
                      "meets_target": worst <= 1.3, "results": results}, indent=2))


if __name__ == "__main__":
    main()

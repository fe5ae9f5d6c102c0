"""`--graph exact|lean`: the other graph an export could have written, measured beside the one it wrote.

exact (the default) snaps each quantized layer to its integer accumulator and computes GroupNorm moments and
global pooling in float64: ONNX Runtime then gives the torch model's logits bit for bit. lean writes plain Q/DQ
as other exporters do (biases inside their ops, float32 norm and pooling): fewer pointwise ops, not bit-exact.
The report gives both graphs' ORT-CPU latency (batch 1, interleaved blocks) and top-1 agreement with torch.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..ort_session import ort_session
from ..timing import interleaved_medians
from .onnx_writer import GRAPHS


def other_graph(graph: str) -> str:
    return GRAPHS[1 - GRAPHS.index(graph)]


def ort_latency_ms(
    protos: dict[str, onnx.ModelProto], input_shape, *, threads: int, batch: int = 1, rounds: int = 6, block: int = 8
) -> dict[str, float]:
    """Median ORT-CPU latency of each graph, timed side by side by the timing harness (timing.interleaved_medians:
    rounds of `block` back-to-back runs per graph, each block's first run dropped)."""
    sessions = {k: ort_session(p, threads=threads, level="all") for k, p in protos.items()}
    x = np.random.default_rng(0).random((batch, *input_shape), dtype=np.float32)
    runs = {k: (lambda x, s=s: s.run(None, {"input": x})) for k, s in sessions.items()}
    return interleaved_medians(runs, x, rounds=rounds, block=block)


def graph_comparison(graph: str, written: dict, other: dict, latency: dict[str, float], threads: int) -> dict:
    """The report's `graphs` entry: each graph's latency and agreement (verify dicts), the written one named."""
    rows = {}
    for name, v in ((graph, written), (other_graph(graph), other)):
        rows[name] = {
            "ort_cpu_ms_batch1": latency[name],
            "top1_agreement": v.get("top1_agreement"),
            "max_abs_diff": v.get("max_abs_diff"),
        }
    return {
        "written": graph,
        "threads": threads,
        **rows,
        "lean_vs_exact_latency": round(latency["lean"] / latency["exact"], 3),
    }

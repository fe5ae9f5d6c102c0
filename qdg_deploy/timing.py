"""The one timing harness (bench, export's graph comparison, benchmarks). The timing loop, the trtexec way: warm up for a while, then time back-to-back iterations until both a
duration and a minimum iteration count are reached.

Each iteration's latency is the gap between consecutive `perf_counter_ns` readings, so the latencies add
up exactly to the timed wall time (throughput from the mean and from the wall clock agree) and the
harness adds one clock read, one list append and one comparison per iteration (see
`benchmarks/harness_overhead.py`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass
class LatencyStats:
    batch: int
    iterations: int
    wall_s: float  # timed phase only (warm-up excluded)
    warmup_iterations: int
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    throughput_ips: float  # images/s = batch / mean latency
    throughput_wall_ips: float  # images/s = batch * iterations / wall time

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(latencies_ns, batch: int, wall_ns: int | None = None, warmup_iterations: int = 0) -> LatencyStats:
    """Statistics of per-iteration latencies given in nanoseconds."""
    lat = np.asarray(latencies_ns, dtype=np.float64) / 1e6  # ms
    if lat.size == 0:
        raise ValueError("no timed iterations")
    wall_s = (float(wall_ns) if wall_ns is not None else float(lat.sum()) * 1e6) / 1e9
    p50, p90, p95, p99 = np.percentile(lat, PERCENTILES)
    mean = float(lat.mean())
    return LatencyStats(
        batch=batch,
        iterations=int(lat.size),
        wall_s=wall_s,
        warmup_iterations=warmup_iterations,
        mean_ms=mean,
        std_ms=float(lat.std()),
        min_ms=float(lat.min()),
        max_ms=float(lat.max()),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        throughput_ips=batch / (mean / 1e3) if mean > 0 else float("inf"),
        throughput_wall_ips=batch * lat.size / wall_s if wall_s > 0 else float("inf"),
    )


def time_fn(
    run: Callable,
    x,
    *,
    warmup_ms: float = 200,
    duration_s: float = 3.0,
    min_iters: int = 10,
    max_iters: int | None = None,
) -> tuple[list[int], int, int]:
    """Call `run(x)` for `warmup_ms`, then until `duration_s` and `min_iters` are both reached.

    Returns (latencies_ns, timed wall ns, warm-up iterations). `run` must return only when its result is
    ready (a GPU runtime synchronizes inside `run`). `max_iters` caps the timed iterations (tests).
    """
    clock = time.perf_counter_ns
    warm_end = clock() + int(warmup_ms * 1e6)
    warm = 0
    while True:  # at least one warm-up call: first-call allocations never land in the timed phase
        run(x)
        warm += 1
        if clock() >= warm_end:
            break
    times: list[int] = []
    append = times.append
    cap = max_iters if max_iters is not None else 1 << 62
    start = t0 = clock()
    deadline = start + int(duration_s * 1e9)
    n = 0
    while True:
        run(x)
        t1 = clock()
        append(t1 - t0)
        t0 = t1
        n += 1
        if (t1 >= deadline and n >= min_iters) or n >= cap:
            break
    return times, t0 - start, warm


def measure(run: Callable, x, batch: int, **kw) -> LatencyStats:
    times, wall, warm = time_fn(run, x, **kw)
    return summarize(times, batch, wall, warm)


def interleaved_medians(runs: dict[str, Callable], x, *, rounds: int = 6, block: int = 8) -> dict[str, float]:
    """Median latency (ms) of several callables timed side by side: `rounds` rounds of one block of `block`
    back-to-back calls per callable, each block's first call a warm-up (`time_fn`'s: a runtime's worker threads
    may still spin for the callable that ran before); each round starts one callable later, so none always
    follows the same one."""
    times: dict[str, list[int]] = {k: [] for k in runs}
    keys = list(runs)
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            lat, _, _ = time_fn(runs[k], x, warmup_ms=0, duration_s=0, min_iters=block - 1, max_iters=block - 1)
            times[k].extend(lat)
    return {k: round(statistics.median(v) / 1e6, 4) for k, v in times.items()}

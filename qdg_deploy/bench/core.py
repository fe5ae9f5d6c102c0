"""`bench`: every artifact on every runtime that can run it, at every batch size; one record each."""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from ..accuracy import domain_counts, make_progress
from ..data.splits import Splits
from ..errors import QdgError
from ..timing import measure
from .artifacts import Artifact, onnx_input_dims, resolve_artifact
from .env import environment
from .record import BenchRecord
from .runtimes import RUNTIMES, Session, get_runtime

SCHEMA = "qdg-deploy-bench/1"
ACCURACY_BATCH = 256


# ---------------------------------------------------------------- accuracy

# What run_splits reads of a run's hyperparameters: two artifacts of one bench call with the same values share one
# split (the cache lives for one `bench` call only, so nothing outlives it or leaks between callers).
SPLIT_KEYS = ("dataset", "data_dir", "image_size", "class_map", "holdout_fraction", "seed")


def _splits(config: dict, cache: dict | None = None) -> Splits:
    from ..data import run_splits

    hp = config["hparams"]
    key = json.dumps([hp.get(k) for k in SPLIT_KEYS], sort_keys=True)
    read = cache[key] if cache is not None and key in cache else run_splits(hp)
    if cache is not None:
        cache[key] = read
    return Splits(*read, config["test_env_index"])


def domain_accuracy(
    session: Session, artifact: Artifact, batch: int = ACCURACY_BATCH, cache: dict | None = None
) -> dict:
    """Accuracy on every domain of the artifact's data set (its run's split): a training domain on its
    held-out `out` split (validation), the held-out test domain on all of it — as `qdg-deploy eval`.
    `cache`: splits already read in this bench call (keyed by SPLIT_KEYS' values)."""
    cfg = artifact.config
    counts = domain_counts(session.predict, _splits(cfg, cache), batch, session.fixed_batch)
    return {"dataset": cfg["hparams"]["dataset"], **counts}


# ---------------------------------------------------------------- the driver


def select_runtimes(names: list[str] | None) -> tuple[list, list[dict]]:
    """(runtimes to use, skipped entries for the unavailable ones). Without names: every registered one."""
    chosen = [get_runtime(n) for n in names] if names else list(RUNTIMES.values())
    use, skipped = [], []
    for rt in chosen:
        ok, why = rt.available()
        if ok:
            use.append(rt)
        else:
            skipped.append({"artifact": None, "runtime": rt.name, "batch": None, "reason": f"unavailable: {why}"})
    return use, skipped


def _check_args(artifacts, batches, duration_s: float, warmup_ms: float, min_iters: int) -> list[int]:
    """The sorted distinct batch sizes; QdgError for anything bench cannot run with."""
    if not artifacts:
        raise QdgError("give at least one artifact: a run directory, an .onnx or an .engine file")
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise QdgError(f"batch sizes must be positive integers, got {batches}")
    for name, v in (("--duration-s", duration_s), ("--warmup-ms", warmup_ms)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise QdgError(f"{name} takes a finite number >= 0 (got {v!r})")
    if min_iters < 1:
        raise QdgError(f"--min-iters takes an integer >= 1 (got {min_iters})")
    return batches


def onnx_shape_mismatch(art: Artifact, shape) -> list | None:
    """An .onnx file's fixed input [C, H, W] where it differs from its run directory's (None: they agree, or the
    file's dims are symbolic)."""
    if art.kind != "onnx" or not art.config:
        return None
    dims = onnx_input_dims(art.path)[1:]
    if all(isinstance(d, int) and d > 0 for d in dims) and list(dims) != list(shape):
        return list(dims)
    return None


def _pairs(arts: list[Artifact], runtimes: list[str] | None) -> tuple[list[tuple], list[dict]]:
    """(artifact, runtime) pairs to measure, and the skipped entries (unavailable runtimes, inapplicable pairs)."""
    use, skipped = select_runtimes(runtimes)
    pairs = []
    for art in arts:
        for rt in use:
            ok, why = rt.applies(art)
            if ok:
                pairs.append((art, rt))
            elif runtimes or not why.startswith(f"{rt.name} takes"):
                # Unasked-for runtimes that simply take another artifact kind are not worth a line each.
                skipped.append({"artifact": art.label, "runtime": rt.name, "batch": None, "reason": why})
    if not pairs:
        reasons = "; ".join(f"{s['runtime']}: {s['reason']}" for s in skipped) or "no runtime selected"
        raise QdgError(f"nothing to measure ({reasons})")
    return pairs, skipped


def bench(
    artifacts: list[str | Path],
    runtimes: list[str] | None = None,
    batches=(1, 8, 32),
    *,
    warmup_ms: float = 200,
    duration_s: float = 3.0,
    min_iters: int = 10,
    threads: int | None = None,
    accuracy: bool = True,
    copies: bool = True,
    console: Console | None = None,
    progress: Progress | None = None,
    seed: int = 0,
    cuda_graph: bool = False,
    device: str | None = None,
) -> dict:
    """Time, size and score each artifact on each runtime; returns the JSON-ready result.

    Records: one per (artifact, runtime, batch). `skipped`: every pair / batch not measured, with why.
    `cuda_graph`: runtimes that can (trt) replay a captured CUDA graph per batch shape.
    """
    import torch

    batches = _check_args(artifacts, batches, duration_s, warmup_ms, min_iters)
    pairs, skipped = _pairs([resolve_artifact(a) for a in artifacts], runtimes)

    env = environment(threads)
    torch_threads = torch.get_num_threads()
    rng = np.random.default_rng(seed)
    records = []
    splits_cache: dict = {}  # one data split per distinct data set in this call
    total = len(pairs) * (len(batches) + int(accuracy))
    own = progress is None
    progress = progress or make_progress(console or Console(stderr=True), transient=True, elapsed=True)
    try:
        with progress if own else nullcontext():
            task = progress.add_task("bench", total=total, info="")
            for art, rt in pairs:
                name = f"{Path(art.label).name} · {rt.name}"
                progress.update(task, description=name, info="loading")
                try:
                    kw = {"cuda_graph": cuda_graph} if rt.cuda_graph else {}
                    if rt.takes_device:  # torch runtimes
                        kw["device"] = device
                    session = rt.load(art, threads=threads, copies=copies, **kw)
                except Exception as e:  # one artifact that cannot load must not end the whole bench
                    why = str(e) if isinstance(e, QdgError) else f"load failed: {type(e).__name__}: {e}"
                    skipped.append(
                        {
                            "artifact": art.label,
                            "runtime": rt.name,
                            "batch": None,
                            "reason": why.splitlines()[0] if why else type(e).__name__,
                        }
                    )
                    progress.advance(task, len(batches) + int(accuracy))
                    continue
                try:
                    records.extend(
                        _bench_pair(
                            art,
                            rt,
                            session,
                            batches,
                            rng,
                            skipped,
                            progress,
                            task,
                            warmup_ms=warmup_ms,
                            duration_s=duration_s,
                            min_iters=min_iters,
                            accuracy=accuracy,
                            threads=threads,
                            splits_cache=splits_cache,
                        )
                    )
                finally:
                    session.close()
    finally:
        torch.set_num_threads(torch_threads)
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": env,
        "settings": {
            "batches": batches,
            "warmup_ms": warmup_ms,
            "duration_s": duration_s,
            "min_iters": min_iters,
            "threads": threads,
            "accuracy": accuracy,
            "cuda_graph": cuda_graph,
            "copies": "included" if copies else "excluded",
            "input": "uniform [0, 1) float32, NCHW",
            "latency": "per iteration, between consecutive perf_counter_ns readings (trtexec-style "
            "warm-up then timed duration)",
        },
        "records": records,
        "skipped": skipped,
    }


def _bench_pair(
    art,
    rt,
    session,
    batches,
    rng,
    skipped,
    progress,
    task,
    *,
    warmup_ms,
    duration_s,
    min_iters,
    accuracy,
    threads,
    splits_cache=None,
) -> list[dict]:
    import torch

    shape = art.input_shape or getattr(session, "input_shape", None)
    size = session.size()
    acc, acc_reason = None, None
    recs = []
    with torch.inference_mode():
        for b in batches:
            progress.update(task, info=f"batch {b}")
            if shape is None:
                skipped.append(
                    {
                        "artifact": art.label,
                        "runtime": rt.name,
                        "batch": b,
                        "reason": "input shape unknown (no run directory and a dynamic ONNX input)",
                    }
                )
            elif (other := onnx_shape_mismatch(art, shape)) is not None:
                skipped.append(
                    {
                        "artifact": art.label,
                        "runtime": rt.name,
                        "batch": b,
                        "reason": f"the ONNX input is {other} but its run's images are {list(shape)}: "
                        f"export it again from its run",
                    }
                )
            elif session.fixed_batch and b != session.fixed_batch:
                skipped.append(
                    {
                        "artifact": art.label,
                        "runtime": rt.name,
                        "batch": b,
                        "reason": f"the artifact has a fixed batch of {session.fixed_batch}",
                    }
                )
            elif session.batch_limits and not session.batch_limits[0] <= b <= session.batch_limits[1]:
                lo, hi = session.batch_limits
                skipped.append(
                    {
                        "artifact": art.label,
                        "runtime": rt.name,
                        "batch": b,
                        "reason": f"outside the TensorRT optimization profile's batch range {lo}..{hi} "
                        f"(rebuild with export --batch-range)",
                    }
                )
            else:
                x = rng.random((b, *shape), dtype=np.float32)
                stats = measure(session.run, x, b, warmup_ms=warmup_ms, duration_s=duration_s, min_iters=min_iters)
                recs.append(
                    BenchRecord(
                        art.label,
                        str(art.path),
                        art.kind,
                        str(art.run_dir) if art.run_dir else None,
                        rt.name,
                        b,
                        [b, *shape],
                        session.copies,
                        threads,
                        session.info,
                        rt.versions(),
                        stats,
                        size,
                    )
                )
            progress.advance(task)
        if accuracy:
            progress.update(task, info="accuracy")
            if art.config is None:
                acc_reason = (
                    "no run directory around the artifact (parent with config.json) and no data set in "
                    "its metadata: data set unknown"
                )
            elif shape is not None and onnx_shape_mismatch(art, shape) is not None:
                acc_reason = "accuracy skipped: the ONNX input differs from its run's images"
            else:
                start = time.perf_counter()
                try:
                    acc = domain_accuracy(session, art, cache=splits_cache)
                    acc["seconds"] = round(time.perf_counter() - start, 2)
                except QdgError as e:  # e.g. the data set is not on this machine
                    acc_reason = f"accuracy skipped: {e}"
            progress.advance(task)
        else:
            acc_reason = "--no-accuracy"
    for r in recs:
        r.accuracy, r.accuracy_skipped = acc, acc_reason
    if not recs and acc is not None:  # no batch timed (fixed batch elsewhere): keep the accuracy anyway
        skipped.append(
            {
                "artifact": art.label,
                "runtime": rt.name,
                "batch": None,
                "reason": "no batch size could be timed",
                "accuracy": acc,
            }
        )
    return [r.to_json() for r in recs]

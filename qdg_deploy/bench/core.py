"""`bench`: every artifact on every runtime that can run it, at every batch size; one record each."""

from __future__ import annotations

import datetime as _dt
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from ..errors import QdgError
from ..evaluation import domain_counts, make_progress
from .artifacts import Artifact, onnx_input_dims, resolve_artifact
from .env import environment
from .harness import measure
from .runtimes import RUNTIMES, Session, get_runtime

SCHEMA = "qdg-deploy-bench/1"
ACCURACY_BATCH = 256


# ---------------------------------------------------------------- accuracy

_SPLITS: dict[tuple, list] = {}


def _splits(config: dict):
    from ..data import run_splits

    hp = config["hparams"]
    key = (hp["dataset"], hp.get("data_dir"), hp.get("image_size"), hp["holdout_fraction"], hp["seed"])
    if key not in _SPLITS:
        _SPLITS[key] = run_splits(hp)[1]
    return _SPLITS[key]


def domain_accuracy(session: Session, artifact: Artifact, batch: int = ACCURACY_BATCH) -> dict:
    """Accuracy on every domain of the artifact's data set (its run's split): a training domain on its
    held-out `out` split (validation), the held-out test domain on all of it — as `qdg-deploy eval`."""
    cfg = artifact.config
    counts = domain_counts(session.predict, _splits(cfg), cfg["test_env_index"], batch, session.fixed_batch)
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


def bench(artifacts: list[str | Path], runtimes: list[str] | None = None, batches=(1, 8, 32), *,
          warmup_ms: float = 200, duration_s: float = 3.0, min_iters: int = 10, threads: int | None = None,
          accuracy: bool = True, copies: bool = True, console: Console | None = None,
          progress: Progress | None = None, seed: int = 0, cuda_graph: bool = False,
          device: str | None = None) -> dict:
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
                    skipped.append({"artifact": art.label, "runtime": rt.name, "batch": None,
                                    "reason": why.splitlines()[0] if why else type(e).__name__})
                    progress.advance(task, len(batches) + int(accuracy))
                    continue
                try:
                    records.extend(_bench_pair(art, rt, session, batches, rng, skipped, progress, task,
                                               warmup_ms=warmup_ms, duration_s=duration_s, min_iters=min_iters,
                                               accuracy=accuracy, threads=threads))
                finally:
                    session.close()
    finally:
        torch.set_num_threads(torch_threads)
    return {"schema": SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "environment": env,
            "settings": {"batches": batches, "warmup_ms": warmup_ms, "duration_s": duration_s,
                         "min_iters": min_iters, "threads": threads, "accuracy": accuracy, "cuda_graph": cuda_graph,
                         "copies": "included" if copies else "excluded", "input": "uniform [0, 1) float32, NCHW",
                         "latency": "per iteration, between consecutive perf_counter_ns readings (trtexec-style "
                                    "warm-up then timed duration)"},
            "records": records, "skipped": skipped}


def _bench_pair(art, rt, session, batches, rng, skipped, progress, task, *, warmup_ms, duration_s, min_iters,
                accuracy, threads) -> list[dict]:
    import torch

    shape = art.input_shape or getattr(session, "input_shape", None)
    size = session.size()
    acc, acc_reason = None, None
    recs = []
    with torch.inference_mode():
        for b in batches:
            progress.update(task, info=f"batch {b}")
            if shape is None:
                skipped.append({"artifact": art.label, "runtime": rt.name, "batch": b,
                                "reason": "input shape unknown (no run directory and a dynamic ONNX input)"})
            elif (other := onnx_shape_mismatch(art, shape)) is not None:
                skipped.append({"artifact": art.label, "runtime": rt.name, "batch": b,
                                "reason": f"the ONNX input is {other} but its run's images are {list(shape)}: "
                                          f"export it again from its run"})
            elif session.fixed_batch and b != session.fixed_batch:
                skipped.append({"artifact": art.label, "runtime": rt.name, "batch": b,
                                "reason": f"the artifact has a fixed batch of {session.fixed_batch}"})
            elif session.batch_limits and not session.batch_limits[0] <= b <= session.batch_limits[1]:
                lo, hi = session.batch_limits
                skipped.append({"artifact": art.label, "runtime": rt.name, "batch": b,
                                "reason": f"outside the TensorRT optimization profile's batch range {lo}..{hi} "
                                          f"(rebuild with export --batch-range)"})
            else:
                x = rng.random((b, *shape), dtype=np.float32)
                stats = measure(session.run, x, b, warmup_ms=warmup_ms, duration_s=duration_s,
                                min_iters=min_iters)
                d = stats.to_dict()
                recs.append({
                    "artifact": art.label, "artifact_path": str(art.path), "artifact_kind": art.kind,
                    "run_dir": str(art.run_dir) if art.run_dir else None, "runtime": rt.name, "batch": b,
                    "input_shape": [b, *shape], "copies": session.copies, "threads": threads,
                    "runtime_info": session.info, "versions": rt.versions(),
                    "latency_ms": {k[:-3]: d[k] for k in ("mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
                                                          "min_ms", "max_ms", "std_ms")},
                    "iterations": d["iterations"], "warmup_iterations": d["warmup_iterations"],
                    "wall_s": d["wall_s"], "throughput_ips": d["throughput_ips"],
                    "throughput_wall_ips": d["throughput_wall_ips"], "size": size})
            progress.advance(task)
        if accuracy:
            progress.update(task, info="accuracy")
            if art.config is None:
                acc_reason = ("no run directory around the artifact (parent with config.json) and no data set in "
                              "its metadata: data set unknown")
            elif shape is not None and onnx_shape_mismatch(art, shape) is not None:
                acc_reason = "accuracy skipped: the ONNX input differs from its run's images"
            else:
                start = time.perf_counter()
                try:
                    acc = domain_accuracy(session, art)
                    acc["seconds"] = round(time.perf_counter() - start, 2)
                except QdgError as e:  # e.g. the data set is not on this machine
                    acc_reason = f"accuracy skipped: {e}"
            progress.advance(task)
        else:
            acc_reason = "--no-accuracy"
    for r in recs:
        r["accuracy"] = acc
        r["accuracy_skipped"] = acc_reason
    if not recs and acc is not None:  # no batch timed (fixed batch elsewhere): keep the accuracy anyway
        skipped.append({"artifact": art.label, "runtime": rt.name, "batch": None,
                        "reason": "no batch size could be timed", "accuracy": acc})
    return recs

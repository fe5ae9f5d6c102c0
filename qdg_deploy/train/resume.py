"""`last.ckpt`: everything a killed run needs to continue as if it had not stopped; `train --resume` reads it.

Written by rank 0 at every evaluation (`--checkpoint-freq`), atomically (a temporary file beside it, then
os.replace), so a SIGKILL at any moment leaves the previous checkpoint or the new one, never half of one. It holds
tensors, numbers, strings and lists only: `torch.load(weights_only=True)` reads it, no pickled code runs.

The state: the algorithm's modules (network with its quantizers, discriminators, ...), the optimizer, the fp16 loss
scaler, the weight averaging (SWAD segments and window, SMA sums), the selection (best checkpoint so far, history),
the RNG states (torch, CUDA, numpy, random) and the step; the data streams' sampler state is their seeds and the
step (streams.IndexBatches skips the batches already drawn)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import QdgError
from ..io import atomic_path
from ..quant import is_quantized
from ..runs import CHECKPOINT
from . import hparams
from .swad import RunningAverage, Segment

LAST = CHECKPOINT
FORMAT = 1


def run_signature(hp: dict) -> str:
    """The options a run computes with; those that say only where and how fast (the table's `runtime` ones: device,
    amp, threads, ...) are left out, so a resumed run may change them."""
    runtime = {h.name for h in hparams.HPARAMS if h.runtime}
    return json.dumps({k: v for k, v in hp.items() if k not in runtime}, sort_keys=True, default=str)


def average_state(avg: RunningAverage, ids: dict) -> int:
    """Index of `avg` in `ids` (one entry per distinct average: segments share them)."""
    return ids.setdefault(id(avg), (len(ids), avg))[0]


def averaging_state(wa) -> dict:
    ids: dict = {}
    seg = lambda s: None if s is None else {"average": average_state(s.average, ids), "loss": s.loss}  # noqa: E731
    state = {"segment": average_state(wa.segment, ids), "sma": average_state(wa.sma, ids)}
    v = wa.valley
    if v is not None:
        state["valley"] = {
            "converge_q": [seg(s) for s in v.converge_q],
            "pending": [seg(s) for s in v.pending],
            "window": None if v.window is None else average_state(v.window, ids),
            "threshold": v.threshold,
            "converge_step": v.converge_step,
            "dead": v.dead,
            "joined": list(v.joined),
            "last": seg(v.last),
        }
    state["averages"] = [
        {"sum": a.sum, "count": a.count, "end_step": a.end_step} for _, a in sorted(ids.values(), key=lambda t: t[0])
    ]
    return state


def load_averaging(wa, state: dict, device: torch.device) -> None:
    avgs = []
    for a in state["averages"]:
        r = RunningAverage()
        r.sum = {k: v.to(device) for k, v in a["sum"].items()}
        r.count, r.end_step = a["count"], a["end_step"]
        avgs.append(r)
    seg = lambda s: None if s is None else Segment(avgs[s["average"]], s["loss"])  # noqa: E731
    wa.segment, wa.sma = avgs[state["segment"]], avgs[state["sma"]]
    if "valley" in state:
        v, sv = wa.valley, state["valley"]
        v.converge_q.clear()
        v.converge_q.extend(seg(s) for s in sv["converge_q"])
        v.pending = [seg(s) for s in sv["pending"]]
        v.window = None if sv["window"] is None else avgs[sv["window"]]
        v.threshold, v.converge_step, v.dead = sv["threshold"], sv["converge_step"], sv["dead"]
        v.joined, v.last = list(sv["joined"]), seg(sv["last"])


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": json.dumps(random.getstate()),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: Path, algo, fit, step: int, hp: dict) -> None:
    state = {
        "format": FORMAT,
        "step": step,
        "signature": run_signature(hp),
        "quantized": is_quantized(algo.network),
        "algorithm": algo.state_dict(),
        "extra": algo.extra_state(),
        "optimizer": algo.optimizer.state_dict(),
        "scaler": algo.scaler.state_dict() if algo.scaler is not None else None,
        "best": {"val": fit.best_val, "step": fit.best_step, "state": fit.best_state},
        "history": json.dumps(fit.history),
        "averaging": averaging_state(fit.averaging),
        "rng": rng_state(),
    }
    buf = io.BytesIO()  # serialized in memory: torch.save reports a full disk as a RuntimeError, a write as OSError
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())


def read_checkpoint(path: Path, hp: dict) -> dict:
    """The checkpoint at `path`, refused (QdgError) when unreadable or written by a run with other options."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: os.replace never leaves one, but a user can
        raise QdgError(
            f"--resume: {path} is not a readable checkpoint ({type(e).__name__}); remove it to start anew"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise QdgError(f"--resume: {path} is not a qdg-deploy checkpoint of format {FORMAT}")
    if state["signature"] != run_signature(hp):
        old, new = json.loads(state["signature"]), json.loads(run_signature(hp))
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise QdgError(
            f"--resume: {path} was written by a run with other options ({', '.join(diff)}); resume "
            f"with the same options, or remove it to start anew"
        )
    return state


def restore(state: dict, algo, fit) -> int:
    """Load the checkpoint into `algo` and `fit`; returns the step it was written at (updates done)."""
    if state["quantized"] and not is_quantized(algo.network):
        algo.quantize()  # the same layers the killed run had swapped in (and, where it does, a fresh optimizer)
        algo.calibrate_pending = False  # their ranges come from the checkpoint
    algo.load_state_dict(state["algorithm"])
    algo.load_extra_state(state["extra"])
    algo.optimizer.load_state_dict(state["optimizer"])
    if algo.scaler is not None and state["scaler"] is not None:
        algo.scaler.load_state_dict(state["scaler"])
    best = state["best"]
    fit.best_val, fit.best_step, fit.best_state = best["val"], best["step"], best["state"]
    fit.history = json.loads(state["history"])
    load_averaging(fit.averaging, state["averaging"], algo.device)
    set_rng_state(state["rng"])
    return state["step"]

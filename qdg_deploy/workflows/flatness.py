"""`qdg-deploy flatness`: training-domain loss under random weight perturbations of growing radius.

As SWAD's local-flatness test (khanrc/swad, visualization/local_flatness_test.py) measures it: draw a random
direction uniformly on the unit sphere of the whole parameter vector (a Gaussian vector divided by its L2 norm,
no filter normalization), move the weights a distance r along it (r is the L2 norm of the change), and take the
loss there; repeat for several directions and report the mean ± std per radius. The loss is the cross-entropy
on the training domains' `in` splits (a fixed subsample of each), in eval mode.

Quantizer parameters (LSQ step sizes, zero points) are not moved: a quantized layer's forward quantizes its
latent `weight` on every call, so the perturbed weights are re-quantized at the trained steps.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Subset

from ..errors import QdgError
from ..io import write_json


def parse_radius(spec: str) -> tuple[float, float]:
    """'0..R' or 'R' -> (start, end)."""
    m = re.fullmatch(r"\s*(?:([0-9.eE+-]+)\s*\.\.)?\s*([0-9.eE+-]+)\s*", spec)
    try:
        lo, hi = (float(m.group(1)) if m.group(1) else 0.0), float(m.group(2))
    except (AttributeError, ValueError):
        raise QdgError(f"--radius takes 0..R or R (got {spec!r})") from None
    if not (0 <= lo <= hi) or not math.isfinite(hi):
        raise QdgError(f"--radius {spec!r}: need 0 <= start <= end")
    return lo, hi


def perturbable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every parameter except the quantizers' own (steps, zero points)."""
    from ..quant import Quantizer

    skip = {id(p) for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    return [(n, p) for n, p in model.named_parameters() if id(p) not in skip]


def training_data(run, samples: int, seed: int = 0):
    """The training domains' `in` splits, at most `samples` items of each (a fixed random subset)."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for s in run.data().training:
        n = len(s.in_eval)
        idx = torch.randperm(n, generator=g)[:samples].sort().values.tolist() if samples and n > samples else range(n)
        parts.append(Subset(s.in_eval, list(idx)))
    return ConcatDataset(parts)


@torch.no_grad()
def mean_loss(model: nn.Module, data, batch_size: int = 256) -> float:
    from ..accuracy import iter_batches

    total, n = 0.0, 0
    for x, y in iter_batches(data, batch_size):
        total += F.cross_entropy(model(x), torch.as_tensor(y), reduction="sum").item()
        n += len(x)
    return total / n


@torch.no_grad()
def loss_curve(model: nn.Module, data, radii: list[float], directions: int, seed: int = 0) -> dict:
    """Loss at each radius along `directions` random unit directions; the weights are restored afterwards."""
    model.eval()
    params = [p for _, p in perturbable(model)]
    origin = [p.detach().clone() for p in params]
    g = torch.Generator().manual_seed(seed)
    base = mean_loss(model, data)
    losses = []
    try:
        for _ in range(directions):
            v = [torch.randn(p.shape, generator=g) for p in params]
            norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v)).float()
            row = []
            for r in radii:
                for p, o, t in zip(params, origin, v):
                    p.copy_(o + (r / norm) * t)
                row.append(base if r == 0 else mean_loss(model, data))
            losses.append(row)
    finally:
        for p, o in zip(params, origin):
            p.copy_(o)
    arr = np.asarray(losses)
    std = arr.std(axis=0, ddof=1) if directions > 1 else np.zeros(len(radii))
    return {
        "radii": list(radii),
        "mean": arr.mean(axis=0).tolist(),
        "std": std.tolist(),
        "losses": arr.tolist(),
        "loss_at_0": base,
        "n_params_moved": int(sum(p.numel() for p in params)),
    }


def run_flatness(
    run_dirs: list[str | Path],
    out: str | Path,
    *,
    radius: str = "0..1",
    points: int = 11,
    directions: int = 5,
    samples: int = 512,
    seed: int = 0,
) -> dict:
    """The curve of every run, written to OUT/flatness.json and OUT/flatness.png; returns the JSON."""
    from ..runs import load_run

    if points < 2 or directions < 1:
        raise QdgError("--points must be at least 2 and --directions at least 1")
    lo, hi = parse_radius(radius)
    radii = np.linspace(lo, hi, points).tolist()
    runs = [load_run(p) for p in run_dirs]
    result = {
        "radii": radii,
        "directions": directions,
        "samples_per_domain": samples,
        "seed": seed,
        "direction": "Gaussian vector over all non-quantizer parameters, scaled to unit L2 norm (SWAD's "
        "local flatness test); radius = L2 norm of the weight change",
        "loss": "cross-entropy, training domains' in splits, eval mode",
        "runs": {},
    }
    for run in runs:
        curve = loss_curve(run.model, training_data(run, samples, seed), radii, directions, seed)
        curve["method"] = run.metrics.get("method")
        curve["quantized"] = bool(run.config["model"].get("scheme"))
        result["runs"][str(run.path)] = curve
    out = Path(out)
    write_json(out / "flatness.json", result)
    plot(result, out / "flatness.png")
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    for label, c in result["runs"].items():
        r, m, s = np.asarray(c["radii"]), np.asarray(c["mean"]), np.asarray(c["std"])
        ax.plot(r, m, marker="o", ms=3, label=f"{c['method']} · {label}")
        ax.fill_between(r, m - s, m + s, alpha=0.2)
    ax.set_xlabel("perturbation radius (L2 norm of the weight change)")
    ax.set_ylabel("training-domain loss (CE)")
    ax.set_title(f"Local flatness: mean ± std over {result['directions']} random directions")
    ax.legend(fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)

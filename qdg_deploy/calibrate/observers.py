"""Range choice for post-training quantization: a clipping threshold from a histogram of |x| (activations, per
tensor) or from the tensor itself (weights, per output channel).

Every activation method reads the same histogram: `bins` equal bins over [0, max|x|] (TensorRT's calibrator
builds 2048), counted over all calibration batches. A method returns the threshold T; the caller turns it into a
step (T / qmax, or a clipped [lo, hi] for a quantizer with a zero point).

- minmax: T = max|x|.
- percentile p: the upper edge of the first bin at which the cumulative count reaches p % of all counts.
- entropy: TensorRT's KL-divergence calibration (Migacz, "8-bit Inference with TensorRT", GTC 2017): for every
  candidate i ≥ levels bins, P is the first i bins with everything beyond folded into the last, Q is P merged into
  `levels` equal groups and spread back evenly over each group's non-empty bins; T = (argmin KL(P‖Q) + 0.5)·width.
  The zero bin counts as its neighbour (the ReLU spike, see entropy_threshold).
- mse: the candidate edge whose rounding-and-clipping error Σ count·(x - q_T(x))² over bin centres is smallest.
"""

from __future__ import annotations

import numpy as np
import torch

ACT_METHODS = ("minmax", "percentile", "entropy", "mse")
WEIGHT_METHODS = ("minmax", "mse")
BINS = 2048


class AbsHistogram:
    """Counts of |x| in `bins` equal bins over [0, top]; top is fixed by a first pass (the tensor's max |x|)."""

    def __init__(self, top: float, bins: int = BINS):
        self.top = float(top)
        self.counts = np.zeros(bins, dtype=np.float64)

    @property
    def width(self) -> float:
        return self.top / len(self.counts) if self.top > 0 else 0.0

    def add(self, x: torch.Tensor) -> None:
        if self.top <= 0:
            self.counts[0] += x.numel()
            return
        h = torch.histc(x.detach().abs().float().flatten(), bins=len(self.counts), min=0.0, max=self.top)
        self.counts += h.double().cpu().numpy()


def threshold(hist: AbsHistogram, method: str, levels: int, percentile: float = 99.99) -> float:
    """The clipping threshold T of |x| that `method` picks; `levels` is the number of non-negative codes (128 for
    int8, 256 for uint8 after a ReLU)."""
    if hist.top <= 0 or hist.counts.sum() == 0:
        return 0.0
    if method == "minmax":
        return hist.top
    if method == "percentile":
        return percentile_threshold(hist.counts, hist.width, percentile)
    if method == "entropy":
        return entropy_threshold(hist.counts, hist.width, levels)
    if method == "mse":
        return mse_threshold(hist.counts, hist.width, levels)
    raise ValueError(method)


def percentile_threshold(counts: np.ndarray, width: float, percentile: float) -> float:
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, cum[-1] * percentile / 100.0))  # first bin whose cumulative count reaches p %
    return (min(i, len(counts) - 1) + 1) * width


def entropy_threshold(counts: np.ndarray, width: float, levels: int) -> float:
    n = len(counts)
    if n <= levels:
        return n * width
    # The bin at 0 holds every zero a ReLU wrote (often half the tensor): that spike would dominate P and favour
    # the narrowest range. NVIDIA's calibration tools give it its neighbour's count instead; so do we.
    counts = counts.copy()
    counts[0] = counts[1]
    best_i, best_kl = n, np.inf
    for i in range(levels, n + 1):
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()  # the clipped outliers land in the last kept bin
        q = _merge_and_spread(counts[:i], levels)
        kl = _kl(p, q)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return min(best_i + 0.5, n) * width


def _merge_and_spread(p: np.ndarray, levels: int) -> np.ndarray:
    """P's bins merged into `levels` consecutive groups (the first len(p) % levels of them one bin longer), each
    group's total spread evenly over its non-empty bins; empty bins stay empty."""
    size, extra = divmod(len(p), levels)
    sizes = np.full(levels, size) + (np.arange(levels) < extra)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    nonzero = p > 0
    totals = np.add.reduceat(p, starts)
    filled = np.add.reduceat(nonzero.astype(np.float64), starts)
    per_bin = np.divide(totals, filled, out=np.zeros_like(totals), where=filled > 0)
    return np.repeat(per_bin, sizes) * nonzero


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(P‖Q) of two count vectors, each normalized; a bin where P has mass and Q none (only the outlier bin can
    be one) makes the candidate unusable (infinite)."""
    ps, qs = p.sum(), q.sum()
    if ps == 0 or qs == 0:
        return np.inf
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    pn, qn = p[mask] / ps, q[mask] / qs
    return float(np.sum(pn * np.log(pn / qn)))


def mse_threshold(counts: np.ndarray, width: float, levels: int, candidates: int = 256) -> float:
    """The bin edge T (among `candidates` evenly spaced ones) minimizing Σ count·(x − q_T(x))² over bin centres,
    q_T rounding onto `levels` codes 0 … levels−1 of step T / (levels − 1) and clipping at T."""
    n = len(counts)
    centres = (np.arange(n) + 0.5) * width
    edges = np.unique(np.linspace(1, n, min(candidates, n)).round().astype(int)) * width
    best_t, best_err = n * width, np.inf
    for t in edges:
        step = t / (levels - 1)
        q = np.clip(np.round(centres / step), 0, levels - 1) * step
        err = float(np.sum(counts * (centres - q) ** 2))
        if err < best_err:
            best_t, best_err = t, err
    return best_t


@torch.no_grad()
def weight_thresholds(w: torch.Tensor, method: str, qmin: int, qmax: int, candidates: int = 100) -> torch.Tensor:
    """Per output channel (axis 0) clipping threshold of a weight for a symmetric grid [qmin, qmax] of step T/qmax:
    max|w_c| (minmax), or the fraction of it in (0, 1] (`candidates` even steps) with the least squared error."""
    flat = w.detach().float().reshape(w.shape[0], -1)
    top = flat.abs().amax(dim=1)
    if method == "minmax":
        return top
    best_t, best_err = top.clone(), torch.full_like(top, float("inf"))
    for k in range(1, candidates + 1):
        t = top * (k / candidates)
        step = (t / qmax).clamp(min=1e-12)[:, None]
        err = ((torch.clamp(torch.round(flat / step), qmin, qmax) * step - flat) ** 2).sum(dim=1)
        better = err < best_err
        best_t, best_err = torch.where(better, t, best_t), torch.where(better, err, best_err)
    return best_t

"""Calibrate a quantized network's LSQ grids from data: weights per output channel, activations per tensor.

The network is run in float (`float_pass`): every quantizer passes its input through and shows it to an observer,
so each one sees the float tensor it will quantize, as TensorRT's calibrator does. A first pass finds each
tensor's range, a second counts |x| in a histogram over it; the observer method then picks each quantizer's
clipping threshold (calibrate/observers.py), written into the same step and zero point that QAT learns. The
calibrated network is an ordinary quantized one: its eval forward, export and check are those of a trained run.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import QdgError
from ..quant import LsqQuantizer, Quantizer, quant_layers
from ..quant.norms import FoldedBatchNorm2d
from ..quant.plan import PLAN_ATTRS
from ..quant.swap import recast, replace_module
from .observers import ACT_METHODS, WEIGHT_METHODS, AbsHistogram, threshold, weight_thresholds


def _ignore(x: torch.Tensor) -> None:
    return None


@contextmanager
def float_pass(model: nn.Module, observers: dict[Quantizer, Callable] | None = None, active: Iterable[Quantizer] = ()):
    """`model` (eval mode) computing in float: quantizers not in `active` pass their input through (shown to
    `observers[q]` where given), layers run unplanned (no snapping, float biases) and folded BatchNorms normalize
    again. Everything is put back on exit."""
    observers, active = observers or {}, set(active)
    quantizers = [m for m in model.modules() if isinstance(m, Quantizer) and m not in active]
    # every plan a module holds (a layer's, a block's Add's, a pool's): unplanned, each computes in float
    planned = [(m, a) for m in model.modules() for a in PLAN_ATTRS if a in m.__dict__]
    folded = [(name, m) for name, m in model.named_modules() if type(m) is FoldedBatchNorm2d]
    saved = [getattr(m, a) for m, a in planned]
    was_training = model.training
    try:
        for q in quantizers:
            q.observe = observers.get(q, _ignore)
        for m, a in planned:
            setattr(m, a, None)
        for name, m in folded:
            replace_module(model, name, recast(m, nn.BatchNorm2d))
        model.eval()
        yield model
    finally:
        for q in quantizers:
            q.observe = None
        for (m, a), p in zip(planned, saved):
            setattr(m, a, p)
        for name, m in folded:
            replace_module(model, name, m)
        model.train(was_training)


def check_method(method: str, weight_method: str = "minmax", percentile: float = 99.99) -> None:
    if method not in ACT_METHODS:
        raise QdgError(f"unknown --method {method!r}; choose one of {', '.join(ACT_METHODS)}")
    if weight_method not in WEIGHT_METHODS:
        raise QdgError(f"unknown --weight-method {weight_method!r}; choose one of {', '.join(WEIGHT_METHODS)}")
    if not 0 < percentile <= 100:
        raise QdgError(f"--percentile takes a value in (0, 100], e.g. 99.99 (got {percentile})")


def check_calibratable(model: nn.Module) -> None:
    """Calibration writes uniform LSQ grids (step, zero point); other quantizers have other parameters."""
    for name, q in model.named_modules():
        if isinstance(q, Quantizer) and type(q) is not LsqQuantizer:
            raise QdgError(
                f"quantizer {name} is {q.spec.quantizer!r}: calibration sets LSQ grids only "
                f"(schemes trt, ort, paper with --quantizer lsq)"
            )


@torch.no_grad()
def calibrate_weights(model: nn.Module, method: str = "minmax") -> int:
    """Each quantized layer's weight step per output channel from its weights; returns how many were set."""
    n = 0
    for layer in quant_layers(model).values():
        q = layer.weight_quant
        if q is None:
            continue
        t = weight_thresholds(layer.weight, method, q.qmin, q.qmax)
        if not q.spec.per_channel:
            t = t.max()
        q.step.copy_((t / q.qmax).clamp(min=1e-8).reshape(q.step.shape))
        q.initialized.fill_(True)
        n += 1
    return n


class _RangeObserver:
    """Pass 1 of an activation quantizer: the signed extremes and max |x| of what it reads."""

    def __init__(self, q: Quantizer):
        self.q, self.lo, self.hi = q, 0.0, 0.0

    def __call__(self, x):
        x = _seen(self.q, x)
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))


def _seen(q: Quantizer, x: torch.Tensor) -> torch.Tensor:
    """What the quantizer can represent of x: a zero-point-0 unsigned grid clips negatives at code 0."""
    x = x.detach()
    return x.clamp(min=0) if not q.spec.signed and not q.learned_zp else x


@torch.no_grad()
def calibrate_activations(
    model: nn.Module, batches: list[torch.Tensor], method: str, percentile: float = 99.99, progress=None
) -> int:
    """Set every activation quantizer's step (and zero point) from `batches`; returns how many were set."""
    acts = [m for m in model.modules() if isinstance(m, Quantizer) and not m.is_weight]
    if not acts:
        return 0
    ranges = {q: _RangeObserver(q) for q in acts}
    task = (
        progress.add_task("calibrating", total=2 * len(batches), info=f"{method}, {len(acts)} tensors")
        if progress is not None
        else None
    )
    with float_pass(model, ranges):
        for x in batches:
            model(x)
            progress is not None and progress.advance(task)
    hists = {q: AbsHistogram(max(-r.lo, r.hi)) for q, r in ranges.items()}
    with float_pass(model, {q: (lambda x, q=q: hists[q].add(_seen(q, x))) for q in acts}):
        for x in batches:
            model(x)
            progress is not None and progress.advance(task)
    for q in acts:
        set_activation_grid(q, threshold(hists[q], method, _levels(q), percentile), ranges[q].lo, ranges[q].hi)
    return len(acts)


def _levels(q: Quantizer) -> int:
    """Non-negative codes the threshold spans: a zero-point grid splits its codes between the two signs."""
    return (q.qmax - q.qmin + 1) // 2 if q.learned_zp else q.qmax + 1


@torch.no_grad()
def set_activation_grid(q: Quantizer, t: float, lo: float, hi: float) -> None:
    """Step (and zero point) for clipping threshold t: symmetric t / qmax, or with a zero point the data's
    [lo, hi] clipped to [-t, t]."""
    if q.learned_zp:
        lo, hi = max(lo, -t), min(hi, t)
        step = max(hi - lo, 1e-8) / (q.qmax - q.qmin)
        q.zero_point.fill_(float(min(max(round(q.qmin - lo / step), q.qmin), q.qmax)))
    else:
        step = max(t, 1e-8) / q.qmax
    q.step.fill_(max(step, 1e-8))
    q.initialized.fill_(True)


def calibrate_model(
    model: nn.Module,
    batches: list[torch.Tensor],
    method: str = "percentile",
    *,
    percentile: float = 99.99,
    weight_method: str = "minmax",
    progress=None,
) -> dict:
    """Calibrate a quantized model in place (weights, then activations on `batches`); returns what was done."""
    check_method(method, weight_method, percentile)
    check_calibratable(model)
    if not batches:
        raise QdgError("calibration needs at least one batch of images")
    n_w = calibrate_weights(model, weight_method)
    n_a = calibrate_activations(model, batches, method, percentile, progress)
    return {
        "method": method,
        "percentile": percentile if method == "percentile" else None,
        "weight_method": weight_method,
        "images": sum(len(x) for x in batches),
        "batches": len(batches),
        "weight_quantizers": n_w,
        "activation_quantizers": n_a,
    }

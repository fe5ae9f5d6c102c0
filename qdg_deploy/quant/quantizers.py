"""Quantizers: the QuantSpec record, the Quantizer base and LSQ (learned step size); all by name in quant/catalog.py.

Every quantizer maps a float tensor to `(q - z) * s` with q an integer code in [qmin, qmax], so an
exporter can read `integer_codes()`, `scale()` and `zero_point()` and write QuantizeLinear /
DequantizeLinear that reproduce the forward exactly. Division (x / s) and round-half-to-even are used
on purpose: that is what ONNX QuantizeLinear computes, so ties land on the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..device import fp32_region
from ..errors import QdgError


@dataclass(frozen=True)
class QuantSpec:
    """A declarative description of one quantizer (weights or activations)."""

    bits: int = 8
    signed: bool = True
    narrow: bool = False  # signed narrow range drops the most negative code: [-(2^(b-1)-1), 2^(b-1)-1]
    per_channel: bool = False  # one step per output channel (axis 0); per-tensor otherwise
    zero_point: str = "none"  # "none" (0), "learned" (LSQ+-style learned offset), "relu" (0 after ReLU else learned)
    quantizer: str = "lsq"

    def __post_init__(self):
        # 1 bit is binary (sign) quantization: only the "bwn" quantizer is defined there.
        low = 1 if self.quantizer == "bwn" else 2
        if not low <= self.bits <= 8:
            raise QdgError(f"quantization bits must be {low}..8 for quantizer {self.quantizer!r}, got {self.bits}")
        if self.zero_point not in ("none", "learned", "relu"):
            raise QdgError(f"zero_point must be none, learned or relu, got {self.zero_point!r}")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1 - (1 if self.narrow else 0)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward, identity backward (straight-through estimator)."""
    return (torch.round(x) - x).detach() + x


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Same value as x, bit for bit; the gradient reaching x is multiplied by `factor`.

    Written as x + (t - t) with t = x * factor: (x - t) + t can differ from x in its last bit, which
    would make the forward use a step one ulp off the exported scale and move ties.
    """
    t = x * factor
    return x.detach() + (t - t.detach())


class Quantizer(nn.Module):
    """Base: holds the spec and the (possibly learned) step and zero point.

    `step` has shape [C, 1, ...] for per-channel weights and [] for per-tensor. Steps are initialized
    from the first tensor seen (`initialized` buffer), so activation ranges come from data at the moment
    quantization starts, as the issue asks.
    """

    learn_step = True
    learn_zero_point = True  # False: the zero point stays 0 whatever the spec says (fixed-grid quantizers)
    qdq_activations = True  # False: non-uniform levels, which QuantizeLinear/DequantizeLinear cannot express
    transform: str | None = None  # "daq": a fixed nonlinearity (the normal CDF) precedes the uniform rounding
    # Set only inside ptq.float_pass: the quantizer then passes its input through unchanged and shows it to
    # this callable, so the network computes in float and each quantizer sees the float tensor it will quantize.
    observe = None

    def __init__(
        self, spec: QuantSpec, channels: int = 1, ndim: int = 4, is_weight: bool = False, after_relu: bool = False
    ):
        super().__init__()
        self.spec = spec
        self.is_weight = is_weight
        shape = (channels,) + (1,) * (ndim - 1) if spec.per_channel else ()
        self.step = nn.Parameter(torch.ones(shape), requires_grad=self.learn_step)
        self.learned_zp = self.learn_zero_point and (
            spec.zero_point == "learned" or (spec.zero_point == "relu" and not after_relu)
        )
        # Stored as a float Parameter so LSQ+ can learn it; the forward rounds it (STE), so the value the
        # network computes with is always an integer and exports as an ONNX zero point exactly.
        self.zero_point = nn.Parameter(torch.zeros(()), requires_grad=self.learned_zp)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def qmin(self) -> int:
        return self.spec.qmin

    @property
    def qmax(self) -> int:
        return self.spec.qmax

    def extra_repr(self) -> str:
        s = self.spec
        zp = "learned zp" if self.learned_zp else "zp 0"
        return (
            f"{s.quantizer} {s.bits}-bit [{self.qmin}, {self.qmax}], "
            f"{'per-channel' if s.per_channel else 'per-tensor'}, {zp}"
        )

    def _reduce_dims(self, x: torch.Tensor):
        return tuple(range(1, x.dim())) if self.spec.per_channel else tuple(range(x.dim()))

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """LSQ init: s = 2 mean|x| / sqrt(Qp); with a learned zero point, fit [min, max] instead."""
        x = x.detach().float()
        dims = self._reduce_dims(x)
        if self.learned_zp:
            lo = x.amin(dim=dims).clamp(max=0) if dims else x.clamp(max=0)
            hi = x.amax(dim=dims).clamp(min=0) if dims else x.clamp(min=0)
            step = (hi - lo).clamp(min=1e-8) / (self.qmax - self.qmin)
            zp = torch.round(self.qmin - lo / step).clamp(self.qmin, self.qmax)
            self.zero_point.copy_(zp.mean())
        else:
            step = 2 * x.abs().mean(dim=dims) / math.sqrt(max(self.qmax, 1))
        self.step.copy_(step.clamp(min=1e-8).reshape(self.step.shape))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe is not None:
            self.observe(x)
            return x
        # Under autocast (--amp) the codes, the steps and their gradients stay float32: a bf16 x / s moves codes
        # (8 significant bits cannot tell 100.5 from 101), and exported QDQ scales are float32.
        with fp32_region(x):
            x = x.float()
            if not self.initialized:
                self.init_from(x)
            return self.fake_quant(x)

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def input_tangents(self, x: torch.Tensor):
        """For an x that needs no gradient (the image entering the first layer): (out, [(p, d), ...]) with out the
        fake-quantized x without autograd history and, for each learned parameter p (a scalar that carries its
        gradient to the parameter), d = ∂out/∂p elementwise (the number 0.0 where it is zero everywhere); a layer linear in
        its input then gets p's gradient from one forward op on d (quant/layers.py). None where the quantizer has no
        such form or is not set up yet."""
        if self.observe is not None or not self.initialized:
            return None
        with fp32_region(x):
            return self.tangent_form(x.float())

    def tangent_form(self, x: torch.Tensor):
        return None

    # Exporter-facing views: exact integer codes, positive scales, integer zero points.
    def scale(self) -> torch.Tensor:
        return self.step.detach().abs().clamp(min=1e-8)

    def zero_point_int(self) -> int:
        return int(torch.round(self.zero_point.detach()).clamp(self.qmin, self.qmax).item())

    @torch.no_grad()
    def integer_codes(self, x: torch.Tensor) -> torch.Tensor:
        """The integer codes q with fake_quant(x) == (q - zero_point) * scale, as int32."""
        s = self.scale()
        return torch.clamp(torch.round(x / s) + self.zero_point_int(), self.qmin, self.qmax).to(torch.int32)


class _LsqFakeQuant(torch.autograd.Function):
    """LSQ fake-quant with its gradients written out, so autograd keeps one node instead of a chain of
    elementwise ops (the training-step overhead target is ≤ 1.3× float).

    forward:  q = clamp(round(x / s), qmin - z, qmax - z);  out = q * s   (z an integer: the same as
              clamp(round(x / s) + z, qmin, qmax) - z, in one pass instead of three)
    backward: LSQ's regions are on the unrounded v = x/s + z: inside when qmin <= v <= qmax.
              x: straight-through inside, 0 outside;
              s: round(v) - v inside, c - z outside (c the range end), times g. Both equal
                 (out - x·inside) / s, whose sum against grad is Σ grad·out - Σ grad_x·x: two dot
                 products, no full-size temporary (the float32 sums carry ~1e-4 relative error on the
                 largest activations, as the elementwise form's sum did);
              z: -s outside, 0 inside, times g: Σ grad - Σ grad_x, two sums.
    `z` is None when the zero point is fixed at 0, which skips its arithmetic on the hot path.
    On CPU every fresh full-size tensor costs page faults, so the backward allocates as few as it can: with
    one step (per-tensor) the range test runs on x against the two float32 bounds that bracket the range
    exactly (`_x_bounds`), so v = x / s is never formed again.
    The output is saved for the backward (the conv reading it holds it anyway), so an in-place op on it
    (e.g. `relu_`) makes autograd refuse the backward: apply such ops out of place.
    """

    @staticmethod
    def forward(ctx, x, s, z, qmin, qmax, g):
        # On the CPU, when every x / s lies in the range (most weight tensors, many activations) the clamp is a no-op
        # and the backward needs no range test: two read-only reductions decide it exactly (`_all_inside`).
        lo, hi = _range(z, qmin, qmax)
        inside = x.device.type == "cpu" and _all_inside(x, s, lo, hi)
        out = _lsq_values(x, s, lo, hi, clamp=not inside)
        ctx.save_for_backward(x, s, z, out)  # out is the conv's input: autograd holds it anyway
        ctx.consts = (qmin, qmax, g, inside)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, s, z, out = ctx.saved_tensors
        qmin, qmax, g, inside = ctx.consts
        zf = float(z) if z is not None else 0.0
        # inside: qmin <= v <= qmax with v = x/s + z. hardtanh_backward(t, u, lo, hi) keeps t where
        # lo < u < hi in one fused pass (no bool mask, no masked copy: ~8x faster on CPU).
        scratch = None
        if inside:  # every element: the straight-through gradient is grad itself (an Add's backward passes it so too)
            grad_x = grad
            scratch = torch.empty_like(x) if s.dim() else None
        elif (
            s.dim() == 0
            and x.device.type == "cpu"
            and (bounds := _x_bounds(x.dtype, s.item(), qmin - zf, qmax - zf)) is not None
        ):
            grad_x = torch.ops.aten.hardtanh_backward(grad, x, *bounds)
        else:
            # u = v: bounds one float below/above make the test inclusive, as LSQ defines it (torch's clamp passes no
            # gradient at the ends)
            ft = _np_float(x.dtype)
            lo = float(np.nextafter(ft(qmin - zf), ft(-np.inf)))
            hi = float(np.nextafter(ft(qmax - zf), ft(np.inf)))
            scratch = x / s  # v, then the products of the per-channel dots: one temporary for all three
            grad_x = torch.ops.aten.hardtanh_backward(grad, scratch, lo, hi)
        grad_s = grad_z = None
        if ctx.needs_input_grad[1]:
            # (round(v) - v)·s inside, (c - z)·s outside, i.e. out - x·inside; summed against grad that is
            # Σ grad·out - Σ grad_x·x (grad_x = grad·inside): two dots, no full-size temporary
            grad_s = (_dot_to(grad, out, s.shape, scratch) - _dot_to(grad_x, x, s.shape, scratch)).div_(s).mul_(g)
        if z is not None and ctx.needs_input_grad[2]:  # nothing outside, nothing for z
            grad_z = (
                torch.zeros_like(z)
                if inside
                else ((_reduce_to(grad, s.shape) - _reduce_to(grad_x, s.shape)) * s).sum() * -g
            )
        return grad_x, grad_s, grad_z, None, None, None


def _range(z, qmin: int, qmax: int):
    """The range of round(x / s): (qmin - z, qmax - z). Numbers where z is fixed at 0 or on the CPU (clamp with tensor
    bounds is ~10x slower there), 0-dim tensors on other devices (no sync)."""
    if z is None:
        return qmin, qmax
    zb = z.item() if z.device.type == "cpu" else z
    return qmin - zb, qmax - zb


def _lsq_values(x, s, lo, hi, clamp: bool = True) -> torch.Tensor:
    """The fake-quantized x: clamp(round(x / s), lo, hi) · s with (lo, hi) from `_range` (no autograd); `clamp=False`
    where every x / s is known to lie in the range already (`_all_inside`)."""
    q = (x / s).round_()  # in place: a fresh large tensor costs page faults on every step
    if clamp:
        q.clamp_(lo, hi)
    return q.mul_(s)


def _all_inside(x, s, lo: float, hi: float) -> bool:
    """Whether lo <= x / s <= hi for every element, exactly: x / s rounds monotonically in x (s > 0), so the smallest
    and the largest x (of each channel, for a step per channel) decide."""
    if x.numel() == 0:
        return False
    if s.dim() == 0:
        x_lo, x_hi = x.min(), x.max()
    else:
        flat = x.reshape(x.shape[0], -1)
        x_lo, x_hi, s = flat.amin(1), flat.amax(1), s.reshape(-1)  # two reductions: aminmax per row is ~20x slower
    return bool(((x_lo / s) >= lo).all()) and bool(((x_hi / s) <= hi).all())


def _np_float(dtype: torch.dtype):
    """The numpy type of a float tensor's precision (range tests are exact in it)."""
    return np.float64 if dtype == torch.float64 else np.float32


def _x_bounds(dtype: torch.dtype, s: float, lo_v: float, hi_v: float) -> tuple[float, float] | None:
    """(a, b) with a < x < b exactly when lo_v <= x / s <= hi_v, x / s rounded in x's precision (s > 0); None if
    either end was not found within a few dozen floats (then the caller tests v = x / s itself).

    x -> fl(x / s) is monotone, so each end is one float: b the smallest x whose quotient exceeds hi_v, a the largest
    whose quotient is below lo_v. Each starts next to the boundary (c·s, or half the smallest subnormal times s where
    c is 0: an unsigned range's lower end) and moves an ulp at a time, at most a few steps in practice."""
    ft = _np_float(dtype)
    s = ft(s)
    half_tiny_exp = math.frexp(float(np.finfo(ft).smallest_subnormal))[1] - 2  # half the smallest subnormal: 2**this
    q = lambda t: ft(t) / s  # noqa: E731  (numpy divides correctly rounded, as torch's CPU kernel does)

    def first_above(c, sign):
        # the first t (moving toward sign·inf) with sign·q(t) > sign·c
        t = ft(c) * s if c != 0 else ft(sign * math.ldexp(float(s), half_tiny_exp))  # ldexp rounds once, even to 5e-324
        out, back = ft(sign * np.inf), ft(-sign * np.inf)
        for _ in range(64):
            if not sign * q(t) > sign * c:
                break
            t = np.nextafter(t, back)
        for _ in range(64):
            if sign * q(t) > sign * c:
                return float(t)
            t = np.nextafter(t, out)
        return None

    a, b = first_above(lo_v, -1), first_above(hi_v, 1)
    return None if a is None or b is None else (a, b)


def _reduce_to(t: torch.Tensor, shape) -> torch.Tensor:
    """Sum `t` down to a broadcastable parameter shape ([] or [C, 1, ...])."""
    if len(shape) == 0:
        return t.sum()
    return t.sum(dim=tuple(d for d in range(t.dim()) if shape[d] == 1), keepdim=True)


def _dot_to(a: torch.Tensor, b: torch.Tensor, shape, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """sum(a * b) reduced to a parameter shape ([] or [C, 1, ...] on axis 0). Per-tensor it is one dot product; per
    channel the products go to `scratch` (a tensor of a's shape that may be overwritten) when given, else to a
    temporary (torch has no batched dot without one: vecdot multiplies, then sums)."""
    if len(shape) == 0:
        return torch.dot(a.reshape(-1), b.reshape(-1))
    prod = torch.mul(a, b, out=scratch) if scratch is not None else a * b
    return prod.reshape(a.shape[0], -1).sum(dim=1).reshape(shape)


class LsqQuantizer(Quantizer):
    """LSQ (Esser et al. 2020), with an optional LSQ+-style learned integer zero point.

    Step gradient scaled by 1/sqrt(N * Qp), N the tensor's element count (as the LSQ paper and the
    QT-DoG code do, with N the whole tensor even for per-channel steps).
    """

    def _params(self, x: torch.Tensor):
        """The step s and the zero point z (None when fixed at 0) as the forward uses them, with their autograd paths,
        and g, the gradient scale of both."""
        s = self.step.abs().clamp(min=1e-8)
        z = round_ste(self.zero_point) if self.learned_zp else None
        return s, z, 1.0 / math.sqrt(x.numel() * max(self.qmax, 1))

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        s, z, g = self._params(x)
        return _LsqFakeQuant.apply(x, s, z, self.qmin, self.qmax, g)

    def tangent_form(self, x: torch.Tensor):
        if type(self).fake_quant is not LsqQuantizer.fake_quant:  # a subclass with its own forward: the usual path
            return None
        s, z, g = self._params(x)
        with torch.no_grad():
            lo, hi = _range(z, self.qmin, self.qmax)  # numbers: tangent_form runs on the CPU (QuantMixin.quantized_op)
            out = _lsq_values(x, s, lo, hi)
            v = x / s
            inside = (v >= lo) & (v <= hi)  # LSQ's regions, as _LsqFakeQuant's backward
            # d out / d s: round(v) - v inside, c - z outside, i.e. (out - x·inside) / s; d out / d z: 0 inside, -s outside
            d_s = torch.where(inside, out - x, out).div_(s) if s.requires_grad else None
            d_z: torch.Tensor | float | None = (
                torch.where(inside, 0.0, -s) if z is not None and z.requires_grad else None
            )
            if d_z is not None and bool(inside.all()):
                d_z = 0.0  # nothing outside: z's gradient is 0, without a forward op on zeros
        pairs = [(scale_grad(p, g), d) for p, d in ((s, d_s), (z, d_z)) if d is not None]
        return out, pairs

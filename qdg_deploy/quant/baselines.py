"""The quantizers AlignQ compares against, listed with LSQ in quant/catalog.py: dorefa, uniform, apot, bwn.

Each keeps the registry's contract: the forward equals (codes - zero_point) * scale() with integer codes
from `integer_codes(x)` inside [qmin, qmax], so an exporter can write a layer's weights as codes.
(Weight quantizers whose scale follows the weights — uniform, bwn — refresh `step` at every forward and
in `integer_codes`, so call `integer_codes(weight)` before `scale()`.) What is not representable as
QuantizeLinear/DequantizeLinear is said per class (APoT and BWN activations).

Written from the methods' papers and the AlignQ reference code's versions (`quantization_*.py`), with
these choices:
* dorefa  weights tanh-normalized to [0, 1], k-bit rounding, mapped to [-1, 1]: w_q = (2r - n) / n,
          n = 2^k - 1 (odd codes in [-n, n], as DAQ: k + 1 signed bits); activations clamp(a, 0, 1)
          rounded to n steps (codes [0, n]).
* uniform fixed-range uniform quantizer: the step is set once from the tensor's max |x| (weights at
          conversion, activations on the first batch) and never learned. (The reference's "uniform"
          rounds weights with step 1/n and no scale at all, which zeroes small weights; we do not.)
* apot    additive powers-of-two (Li et al. 2020): weights normalized by their mean / std, clipped by a
          learned alpha (init 3), |w| projected onto the APoT grid of b = k - 1 magnitude bits; activations
          clipped by a learned alpha (init 8) onto the k-bit unsigned grid. The grid values are dyadic,
          so codes are integers u in [0, U] with scale alpha / U. Weights: k in 2..7; activations: 2..6.
          APoT activations are not uniform levels, so QuantizeLinear cannot reproduce them.
* bwn     binary weights alpha * sign(w), alpha = mean |w| (codes -1 / 0 / +1); activations binary
          (x > 0), as the reference's sign(clamp(x, 0, 1)). bits must be 1 for both.
"""

from __future__ import annotations

import math

import torch

from ..errors import QdgError
from .quantizers import Quantizer, QuantSpec, round_ste


def _ste(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` forward, identity gradient to x."""
    return x + (value - x).detach()


class _FixedRange:
    """Codes in [-top_code, top_code] for weights and [0, top_code] for activations, fixed by the bit-width,
    so there is nothing to initialize from data."""

    @property
    def qmin(self) -> int:
        return -self.top_code if self.is_weight else 0

    @property
    def qmax(self) -> int:
        return self.top_code

    def init_from(self, x):
        self.initialized.fill_(True)


class DorefaQuantizer(_FixedRange, Quantizer):
    learn_step = False
    learn_zero_point = False

    def __init__(
        self, spec: QuantSpec, channels: int = 1, ndim: int = 4, is_weight: bool = False, after_relu: bool = False
    ):
        super().__init__(spec, channels=channels, ndim=ndim, is_weight=is_weight, after_relu=False)
        self.initialized.fill_(True)
        with torch.no_grad():
            self.step.fill_(1.0 / self.n)

    @property
    def n(self) -> int:
        return 2**self.spec.bits - 1

    @property
    def top_code(self) -> int:
        return self.n

    def _unit(self, x):
        if self.is_weight:
            t = torch.tanh(x)
            return t / (2 * t.abs().max().clamp_min(1e-12)) + 0.5
        return torch.clamp(x, 0.0, 1.0)

    def fake_quant(self, x):
        r = round_ste(self._unit(x) * self.n)
        return (2 * r - self.n) / self.n if self.is_weight else r / self.n

    def scale(self):
        return torch.tensor(1.0 / self.n)

    def zero_point_int(self):
        return 0

    @torch.no_grad()
    def integer_codes(self, x):
        r = torch.round(self._unit(x) * self.n)
        return (2 * r - self.n if self.is_weight else r).to(torch.int32)


class UniformQuantizer(Quantizer):
    """Symmetric (signed) or zero-based (unsigned) uniform grid with a fixed, data-set step."""

    learn_step = False
    learn_zero_point = False

    @torch.no_grad()
    def init_from(self, x):
        x = x.detach().float()
        dims = self._reduce_dims(x)
        top = x.abs().amax(dim=dims) if dims else x.abs().max()
        self.step.copy_((top / max(self.qmax, 1)).clamp(min=1e-8).reshape(self.step.shape))
        self.initialized.fill_(True)

    def fake_quant(self, x):
        s = self.step.detach().abs().clamp(min=1e-8)
        return torch.clamp(round_ste(x / s), self.qmin, self.qmax) * s

    def zero_point_int(self):
        return 0


# --- APoT --------------------------------------------------------------------------------------------


def apot_grid(b: int) -> list[int]:
    """Integer magnitudes u of the additive powers-of-two grid with 2^b levels (value = u / max u).

    b = 1: {0, 1}. b = 2..6: sums of one term from each of 1..3 power-of-two sets, as APoT builds them.
    """
    if b == 1:
        sets = [[0.0, 1.0]]
    elif b == 2:
        sets = [[0.0] + [2.0 ** (-i - 1) for i in range(3)]]
    elif b == 3:
        sets = [[0.0, 2**-1, 2**-2, 2**-4], [0.0, 2**-3]]
    elif b == 4:
        sets = [[0.0] + [2.0 ** (-2 * i - 1) for i in range(3)], [0.0] + [2.0 ** (-2 * i - 2) for i in range(3)]]
    elif b == 5:
        sets = [[0.0, 2**-1, 2**-3, 2**-6], [0.0, 2**-2, 2**-4, 2**-7], [0.0, 2**-5]]
    elif b == 6:
        sets = [[0.0] + [2.0 ** (-3 * i - k) for i in range(3)] for k in (1, 2, 3)]
    else:
        raise QdgError(f"apot supports 1..6 magnitude bits, got {b}")
    values = {0.0}
    for s in sets:
        values = {v + t for v in values for t in s}
    denom = 2 ** max(-int(math.log2(t)) for s in sets for t in s if t > 0)
    return sorted(int(round(v * denom)) for v in values)


class ApotQuantizer(_FixedRange, Quantizer):
    learn_step = False
    learn_zero_point = False
    qdq_activations = False  # non-uniform levels: an exporter must not write activations as plain Q/DQ

    def __init__(
        self, spec: QuantSpec, channels: int = 1, ndim: int = 4, is_weight: bool = False, after_relu: bool = False
    ):
        super().__init__(spec, channels=channels, ndim=ndim, is_weight=is_weight, after_relu=False)
        b = spec.bits - 1 if is_weight else spec.bits
        if not 1 <= b <= 6:
            raise QdgError(
                f"apot {'weights' if is_weight else 'activations'} support "
                f"{'2..7' if is_weight else '2..6'} bits, got {spec.bits}"
            )
        grid = apot_grid(b)
        self.register_buffer("grid", torch.tensor(grid, dtype=torch.float32), persistent=False)
        self.top = grid[-1]
        self.alpha = torch.nn.Parameter(torch.tensor(3.0 if is_weight else 8.0))
        self.initialized.fill_(True)

    @property
    def top_code(self) -> int:
        return self.top

    def _normalized(self, x):
        if self.is_weight:
            x = (x - x.detach().mean()) / x.detach().std().clamp_min(1e-12)
        return x

    def _project(self, mag):
        """Nearest grid magnitude u (integer-valued float) of mag in [0, 1]."""
        idx = (mag.reshape(-1, 1) * self.top - self.grid).abs().argmin(dim=1)
        return self.grid[idx].reshape(mag.shape)

    def fake_quant(self, x):
        alpha = self.alpha.abs().clamp_min(1e-6)
        xc = self._normalized(x) / alpha
        xc = xc.clamp(-1.0, 1.0) if self.is_weight else xc.clamp(0.0, 1.0)
        q = torch.sign(xc) * self._project(xc.detach().abs()) / self.top
        return _ste(xc, q) * alpha

    def scale(self):
        return (self.alpha.detach().abs().clamp_min(1e-6) / self.top).reshape(())

    def zero_point_int(self):
        return 0

    @torch.no_grad()
    def integer_codes(self, x):
        alpha = self.alpha.abs().clamp_min(1e-6)
        xc = self._normalized(x) / alpha
        xc = xc.clamp(-1.0, 1.0) if self.is_weight else xc.clamp(0.0, 1.0)
        return (torch.sign(xc) * self._project(xc.abs())).to(torch.int32)


class BwnQuantizer(Quantizer):
    learn_step = False
    learn_zero_point = False
    qdq_activations = False  # (x > 0) is a threshold at 0, not QuantizeLinear's rounding

    def __init__(
        self, spec: QuantSpec, channels: int = 1, ndim: int = 4, is_weight: bool = False, after_relu: bool = False
    ):
        if spec.bits != 1:
            raise QdgError(f"bwn is binary: it needs 1 bit (--bits 1 --act-bits 1, or --act-bits 0), got {spec.bits}")
        super().__init__(spec, channels=channels, ndim=ndim, is_weight=is_weight, after_relu=False)
        self.initialized.fill_(True)

    @property
    def qmin(self) -> int:
        return -1 if self.is_weight else 0

    @property
    def qmax(self) -> int:
        return 1

    def init_from(self, x):
        self.initialized.fill_(True)

    def _alpha(self, x):
        a = x.detach().abs().mean()
        with torch.no_grad():
            self.step.fill_(float(a))
        return a

    def fake_quant(self, x):
        if self.is_weight:
            return _ste(x, torch.sign(x)) * self._alpha(x)
        xc = torch.clamp(x, 0.0, 1.0)
        return _ste(xc, (xc > 0).to(x.dtype))

    def zero_point_int(self):
        return 0

    @torch.no_grad()
    def integer_codes(self, x):
        if self.is_weight:
            self._alpha(x)
            return torch.sign(x).to(torch.int32)
        return (x > 0).to(torch.int32)

    def scale(self):
        return self.step.detach().abs().reshape(()) if self.is_weight else torch.tensor(1.0)

"""DAQ: AlignQ's domain-alignment quantizer (a normal-CDF transform, then uniform rounding). Its training terms
(gradient approximation, CRP under ADMM) are in train/alignq_terms.py.

With n = 2^k - 1 and Phi the standard normal CDF:

* weights:      w_q = 2 * round(n * Phi((w - mu) / sigma)) / n - 1, mu / sigma the layer's own weight
                mean and (unbiased) std at every forward: 2^k levels evenly spaced over [-1, 1];
* activations:  a_q = (2 * round(n * Phi(a)) / n - 1) * act_range (standard normal, act_range 2).

Rounding has an identity backward (STE) unless AlignQ's gradient approximation replaces it (a weight quantizer's
`round_fn`); the CDF (and mu, sigma) are differentiated normally.

Integer codes. w_q = c / n with c = 2 * round(n * Phi) - n, an odd integer in [-n, n] when n is odd:
n codes per side, so a k-bit DAQ layer needs k + 1 signed bits (4-bit: [-15, 15], int8; 8-bit:
[-255, 255], int16). `qmin` / `qmax` / `scale()` / `integer_codes()` report exactly that, with zero
point 0, so (codes - 0) * scale() == fake_quant(x).

For an exporter, an activation DAQ is a fixed nonlinearity ahead of the quantization:
    r = QuantizeLinear(Phi(a), scale=1/n, zp=0, uint8)        # round(n * Phi), in [0, n]
    a_q = DequantizeLinear(r, scale=2R/n) - R                  # the DAQ output
    c = QuantizeLinear(a_q, scale=R/n, zp=0, int8)              # 2r - n, the conv's input codes
with Phi(a) = 0.5 * (1 + Erf(a / sqrt(2))). `fake_quant` computes round(Phi / float32(1/n)) so that
torch and ONNX QuantizeLinear divide by the same float32 scale.

Where DAQ sits (scheme "alignq", quant/schemes.py): every Conv2d's weights; every Conv2d's input
activation except the first conv's (the image). The classifier (Linear) stays float, as the reference's
`class_classifier` does. On mnist-cnn the conv inputs are GroupNorm outputs, which matches the
reference's placement (its activation quantizers follow a BatchNorm). On torchvision ResNets our
quantizers sit at conv inputs, i.e. after a ReLU (the reference quantizes after the BatchNorm, before the
ReLU): there DAQ only uses the upper half of its levels. Documented deviation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .quantizers import Quantizer, QuantSpec, round_ste

INV_SQRT2 = 1.0 / math.sqrt(2.0)


def normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z * INV_SQRT2))


def levels(bits: int) -> int:
    """n = 2^k - 1: the number of rounding steps of a k-bit DAQ."""
    return 2**bits - 1


def _round_cdf(phi: torch.Tensor, n: int, round_fn=None) -> torch.Tensor:
    """round(n * Phi), computed as Phi / float32(1/n) like ONNX QuantizeLinear does; `round_fn(x, n)` rounds
    (default: with a straight-through backward)."""
    inv = torch.tensor(1.0 / n, dtype=torch.float32, device=phi.device).to(phi.dtype)
    return round_ste(phi / inv) if round_fn is None else round_fn(phi / inv, n)


def weight_stats(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's own weight mean and unbiased std (as the reference's torch.mean / torch.std)."""
    return w.mean(), w.std().clamp_min(1e-12)


def _codes_times_step(r: torch.Tensor, n: int, step: torch.Tensor) -> torch.Tensor:
    """(2r - n) * step: the same value as (2r/n - 1) * range, computed as an exporter's
    DequantizeLinear does (integer code times a float32 scale), so torch and ONNX agree bit for bit."""
    return (2.0 * r - n) * step


def daq_weight(w: torch.Tensor, bits: int, round_fn=None) -> torch.Tensor:
    n = levels(bits)
    mu, sigma = weight_stats(w)
    step = torch.tensor(1.0 / n, dtype=w.dtype, device=w.device)
    return _codes_times_step(_round_cdf(normal_cdf((w - mu) / sigma), n, round_fn), n, step)


def daq_act(a: torch.Tensor, bits: int, act_range: float | torch.Tensor = 2.0) -> torch.Tensor:
    n = levels(bits)
    step = torch.as_tensor(act_range, dtype=a.dtype, device=a.device) / n
    return _codes_times_step(_round_cdf(normal_cdf(a), n), n, step)


class DaqQuantizer(Quantizer):
    """AlignQ's DAQ. Nothing is learned: `step` is unused; `act_range` is a buffer (saved with the run).

    (AlignQ's CRP term reads the quantizer's input through a forward pre-hook: train/alignq_terms.py.)
    """

    learn_step = False
    # A weight quantizer's rounding backward during training (AlignQ's gradient approximation sets it,
    # train/alignq_terms.py); None: straight-through. Not saved: the forward is the same either way.
    round_fn = None
    learn_zero_point = False
    transform = "daq"  # tells an exporter that a CDF transform precedes the activation's Q/DQ

    def __init__(
        self,
        spec: QuantSpec,
        channels: int = 1,
        ndim: int = 4,
        is_weight: bool = False,
        after_relu: bool = False,
        act_range: float = 2.0,
    ):
        super().__init__(spec, channels=channels, ndim=ndim, is_weight=is_weight, after_relu=False)
        self.register_buffer("act_range", torch.tensor(1.0 if is_weight else float(act_range)))
        self.initialized.fill_(True)

    @property
    def n(self) -> int:
        return levels(self.spec.bits)

    @property
    def qmin(self) -> int:
        return -self.n

    @property
    def qmax(self) -> int:
        return self.n

    def extra_repr(self) -> str:
        kind = "weights (mu, sigma per forward)" if self.is_weight else f"activations, range {self.range_value():g}"
        return f"daq {self.spec.bits}-bit, codes [{self.qmin}, {self.qmax}] step 2, {kind}"

    def range_value(self) -> float:
        return float(self.act_range)

    def init_from(self, x: torch.Tensor) -> None:  # nothing to initialize
        self.initialized.fill_(True)

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_weight:
            return daq_weight(x, self.spec.bits, self.round_fn)
        return daq_act(x, self.spec.bits, self.act_range)

    def scale(self) -> torch.Tensor:
        return (self.act_range / self.n).detach().clone()

    def zero_point_int(self) -> int:
        return 0

    @torch.no_grad()
    def integer_codes(self, x: torch.Tensor) -> torch.Tensor:
        """2 * round(n * Phi) - n: odd codes in [-n, n] (n = 2^k - 1), zero point 0."""
        n = self.n
        z = (x - x.mean()) / x.std().clamp_min(1e-12) if self.is_weight else x
        r = torch.round(normal_cdf(z) / torch.tensor(1.0 / n, dtype=torch.float32, device=x.device))
        return (2 * r - n).to(torch.int32)


def is_daq(q: nn.Module | None) -> bool:
    return isinstance(q, DaqQuantizer)

"""Quantized Conv2d / Linear: fake-quant of the input activation and of the weight, then the float op.

They subclass the float layers, so `weight`/`bias` keep their names and a converted model's state dict
is the float one plus quantizer entries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bias import eval_bias
from .exact import exact_eval, is_exact
from .quantizers import QuantSpec, build_quantizer


class QuantMixin:
    """Shared construction for the quantized layers; `weight_quant` / `act_quant` may be None."""

    weight_quant: nn.Module | None
    act_quant: nn.Module | None

    def _setup_quant(self, weight_spec: QuantSpec | None, act_spec: QuantSpec | None, after_relu: bool):
        out_channels = self.weight.shape[0]
        self.weight_quant = (build_quantizer(weight_spec, channels=out_channels, ndim=self.weight.dim(),
                                             is_weight=True) if weight_spec else None)
        self.act_quant = build_quantizer(act_spec, after_relu=after_relu) if act_spec else None
        if self.weight_quant is not None:
            self.weight_quant.init_from(self.weight)  # weight steps come from the weights at conversion

    @classmethod
    def from_float(cls, layer: nn.Module, weight_spec, act_spec, after_relu: bool = False):
        new = cls.__new__(cls)
        new.__dict__.update(layer.__dict__)
        # Fresh module dicts so the quantizers do not leak into the float layer.
        new._parameters = dict(layer._parameters)
        new._buffers = dict(layer._buffers)
        new._modules = dict(layer._modules)
        new._setup_quant(weight_spec, act_spec, after_relu)
        return new

    def quant_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight) if self.weight_quant is not None else self.weight

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_quant(x) if self.act_quant is not None else x

    def op_bias(self) -> torch.Tensor | None:
        """The bias the op adds: in eval mode with integer biases, the one that lands on the int32 grid."""
        if self.training or not getattr(self, "int_bias", False):
            return self.bias
        return eval_bias(self)


class QConv2d(QuantMixin, nn.Conv2d):
    def forward(self, x):
        if is_exact(self):
            return exact_eval(self, x, lambda a, w: self._conv_forward(a, w, None))
        return self._conv_forward(self.quant_input(x), self.quant_weight(), self.op_bias())


class QLinear(QuantMixin, nn.Linear):
    def forward(self, x):
        if is_exact(self):
            return exact_eval(self, x, F.linear)
        return F.linear(self.quant_input(x), self.quant_weight(), self.op_bias())


QUANT_LAYERS = {nn.Conv2d: QConv2d, nn.Linear: QLinear}


class ExportMatchedGroupNorm(nn.GroupNorm):
    """GroupNorm whose eval forward computes what the exported graph computes, op for op: per-group mean, variance
    and rstd = 1 / sqrt(var + eps) in float64, cast to float32, then x * (rstd·gamma) + (beta - mean·rstd·gamma).

    torch's own kernel sums in float32 in its own order; its result differs from any ONNX graph's in the last bits,
    which can move a value across a rounding tie at the next quantizer. In float64 the moments come out the same
    in both runtimes (to float32), so only the convolutions' summation order is left to differ. Training uses
    torch's kernel (same values up to float round-off, and faster)."""

    def forward(self, x):
        if self.training:
            return super().forward(x)
        n, c, g = x.shape[0], self.num_channels, self.num_groups
        xr = x.reshape(n, g, c // g, -1)
        xd = xr.double()
        mean = xd.mean(dim=(2, 3), keepdim=True)
        d = xd - mean
        var = (d * d).mean(dim=(2, 3), keepdim=True)
        rstd = (torch.ones((), dtype=var.dtype, device=x.device) / torch.sqrt(var + self.eps)).float()
        mean = mean.float()
        gamma = self.weight if self.affine else torch.ones(c, device=x.device)
        beta = self.bias if self.affine else torch.zeros(c, device=x.device)
        scale = rstd * gamma.reshape(g, c // g, 1)
        shift = beta.reshape(g, c // g, 1) - mean * scale
        return (xr * scale + shift).reshape(x.shape)


class ExportMatchedAvgPool(nn.AdaptiveAvgPool2d):
    """Global average pooling whose eval forward computes what the exported graph computes: the mean in float64,
    then one cast to float32. A float32 sum depends on its order (torch's and ONNX Runtime's differ in the last
    bits, which moves values across the next quantizer's ties); a float64 sum of float32 values does not, to
    float32 precision."""

    def forward(self, x):
        if self.training or self.output_size not in (1, (1, 1), [1, 1]):
            return super().forward(x)
        return x.double().mean(dim=(2, 3), keepdim=True).to(x.dtype)

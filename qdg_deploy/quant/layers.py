"""Quantized Conv2d / Linear: fake-quant of the input activation and of the weight, then the float op.

They subclass the float layers, so `weight`/`bias` keep their names and a converted model's state dict
is the float one plus quantizer entries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bias import eval_bias
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
        return self._conv_forward(self.quant_input(x), self.quant_weight(), self.op_bias())


class QLinear(QuantMixin, nn.Linear):
    def forward(self, x):
        return F.linear(self.quant_input(x), self.quant_weight(), self.op_bias())


QUANT_LAYERS = {nn.Conv2d: QConv2d, nn.Linear: QLinear}

"""Quantized Conv2d / Linear: fake-quant of the input activation and of the weight, then the float op.

They subclass the float layers, so `weight`/`bias` keep their names and a converted model's state dict
is the float one plus quantizer entries. How a layer runs in eval mode (weight-only, snapped to its integer
accumulator, as ORT's integer kernel) is its `plan`, set once by quant/plan.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .bias import eval_bias
from .catalog import build_quantizer
from .kernels import exact_eval
from .quantizers import QuantSpec, Quantizer
from .swap import recast

if TYPE_CHECKING:
    from .plan import LayerPlan


@dataclass(frozen=True)
class SharedInput:
    """An input quantizer a layer uses but does not own (a ResNet downsample conv reads the tensor its block's conv1
    quantizes: quant/residual.py). Not a module, so the state dict holds that quantizer once, under its owner."""

    quantizer: Quantizer


class QuantMixin:
    """Shared construction for the quantized layers; `weight_quant` / `act_quant` may be None."""

    weight_quant: Quantizer | None
    plan: LayerPlan | None = None  # how the layer runs in eval mode and exports (quant/plan.py)
    shared_input: SharedInput | None = None

    @property
    def act_quant(self) -> Quantizer | None:
        """The input quantizer: the layer's own (a submodule), else the one it shares."""
        own = self._modules.get("act_quant")
        if own is None and self.shared_input is not None:
            return self.shared_input.quantizer
        return own

    def _setup_quant(self, weight_spec: QuantSpec | None, act_spec: QuantSpec | None, after_relu: bool):
        out_channels = self.weight.shape[0]
        self.weight_quant = (build_quantizer(weight_spec, channels=out_channels, ndim=self.weight.dim(),
                                             is_weight=True) if weight_spec else None)
        # a submodule slot even when empty (None): the `act_quant` property reads it (add_module refuses the name)
        self._modules["act_quant"] = build_quantizer(act_spec, after_relu=after_relu) if act_spec else None
        if self.weight_quant is not None:
            self.weight_quant.init_from(self.weight)  # weight steps come from the weights at conversion

    @classmethod
    def from_float(cls, layer: nn.Module, weight_spec, act_spec, after_relu: bool = False):
        new = recast(layer, cls)
        new._setup_quant(weight_spec, act_spec, after_relu)
        return new

    def quant_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight) if self.weight_quant is not None else self.weight

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_quant(x) if self.act_quant is not None else x

    def op_bias(self) -> torch.Tensor | None:
        """The bias the op adds: in eval mode with integer biases, the one that lands on the int32 grid."""
        if self.training or self.plan is None or not self.plan.int_bias:
            return self.bias
        return eval_bias(self, self.plan.bn)


def is_exact(layer: nn.Module) -> bool:
    """Whether the layer runs the exact eval path now: eval mode, and its plan snaps it (or runs it as ORT's kernel)."""
    return (isinstance(layer, QuantMixin) and layer.plan is not None and layer.plan.exact and not layer.training
            and layer.act_quant is not None and layer.weight_quant is not None)


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

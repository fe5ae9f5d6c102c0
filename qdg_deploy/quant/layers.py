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
from .quantizers import Quantizer, QuantSpec
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
        self.weight_quant = (
            build_quantizer(weight_spec, channels=out_channels, ndim=self.weight.dim(), is_weight=True)
            if weight_spec
            else None
        )
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

    def quantized_op(self, x: torch.Tensor, op) -> torch.Tensor:
        """op(quantized x, quantized weight, bias): the training (and non-exact eval) forward; op is the layer's
        float op, linear in its input.

        An x that needs no gradient (the image entering the first layer) with a learned input step: the step's
        gradient Σ grad_x · ∂x_q/∂s equals Σ grad_y · op(∂x_q/∂s, w) because op is linear in its input, so one
        more forward op replaces the op's backward to its input. For a 3-channel stem conv that backward is the
        slowest conv kernel of a CPU training step (measured on ResNet-18: the image quantizer cost 7.7 % of a
        W8A8 step, most of it there). The sums are float32, as every quantizer's gradients are."""
        q = self.act_quant
        # CPU without autocast only: on a GPU the input backward is cheap, tangent_form would sync, and the saved
        # tangents cost memory; under autocast the extra op (and its sum) would run in bf16 / fp16
        split = (
            q.input_tangents(x)
            if q is not None
            and not x.requires_grad
            and torch.is_grad_enabled()
            and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            else None
        )
        if split is None:
            return op(self.quant_input(x), self.quant_weight(), self.op_bias())
        xq, pairs = split
        w = self.quant_weight()
        y = op(xq, w, self.op_bias())
        if not pairs:
            return y
        wd = w.detach()
        return _Tangents.apply(y, *(t for p, d in pairs for t in (op(d, wd, None) if torch.is_tensor(d) else None, p)))

    def op_bias(self) -> torch.Tensor | None:
        """The bias the op adds: in eval mode with integer biases, the one that lands on the int32 grid."""
        if self.training or self.plan is None or not self.plan.int_bias:
            return self.bias
        return eval_bias(self, self.plan.bn)


class _Tangents(torch.autograd.Function):
    """y unchanged; each scalar p gets the gradient Σ grad_y · c, c = ∂y/∂p (given as pairs c, p after y; c None: 0).

    y is returned as an in-place op returns its input (mark_dirty), not as a view: a view made inside a custom
    Function may not be modified in place, and a ReLU(inplace=True) may follow the layer."""

    @staticmethod
    def forward(ctx, y, *cps):
        ctx.mark_dirty(y)
        ctx.save_for_backward(*cps[0::2])
        return y

    @staticmethod
    def backward(ctx, grad):
        g = grad.reshape(-1)
        out = [grad]
        for c in ctx.saved_tensors:  # quantizer parameters are float32
            out += [None, torch.dot(g, c.reshape(-1)) if c is not None else grad.new_zeros(())]
        return tuple(out)


def is_exact(layer: nn.Module) -> bool:
    """Whether the layer runs the exact eval path now: eval mode, and its plan snaps it (or runs it as ORT's kernel)."""
    return (
        isinstance(layer, QuantMixin)
        and layer.plan is not None
        and layer.plan.exact
        and not layer.training
        and layer.act_quant is not None
        and layer.weight_quant is not None
    )


class QConv2d(QuantMixin, nn.Conv2d):
    def forward(self, x):
        if is_exact(self):
            return exact_eval(self, x, lambda a, w: self._conv_forward(a, w, None))
        return self.quantized_op(x, self._conv_forward)


class QLinear(QuantMixin, nn.Linear):
    def forward(self, x):
        if is_exact(self):
            return exact_eval(self, x, F.linear)
        return self.quantized_op(x, F.linear)


QUANT_LAYERS = {nn.Conv2d: QConv2d, nn.Linear: QLinear}

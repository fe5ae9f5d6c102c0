"""The activations of mobile CNNs as quantized models hold them: eval-exact forms and the `QAct*` / `QReLU` classes
with their quantizers (why and how: quant/mobile.py, which places them). A module of its own so that
quant/ort_fusion.py can name these classes without importing the placement passes."""

from __future__ import annotations

import torch
from torch import nn


def _sigmoid64(xd: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-xd))


class ExactHardswish(nn.Hardswish):
    def forward(self, x):
        return super().forward(x) if self.training else x * torch.clamp(x + 3, 0, 6) / 6


class ExactHardsigmoid(nn.Hardsigmoid):
    def forward(self, x):
        return super().forward(x) if self.training else torch.clamp(x + 3, 0, 6) / 6


class ExactSigmoid(nn.Sigmoid):
    def forward(self, x):
        return super().forward(x) if self.training else _sigmoid64(x.double()).to(x.dtype)


class ExactSiLU(nn.SiLU):
    def forward(self, x):
        if self.training:
            return super().forward(x)
        xd = x.double()
        return (xd * _sigmoid64(xd)).to(x.dtype)


# float class -> its eval-matched class (every quantized model with quantized activations)
EXACT_ACTS = {
    nn.Hardswish: ExactHardswish,
    nn.Hardsigmoid: ExactHardsigmoid,
    nn.Sigmoid: ExactSigmoid,
    nn.SiLU: ExactSiLU,
}


class _InputQuant:
    """An activation that reads its input through `act_quant` (the output quantizer of the conv before it)."""

    def forward(self, x):
        return super().forward(self.act_quant(x))


class QActReLU6(_InputQuant, nn.ReLU6):
    pass


class QActHardswish(_InputQuant, ExactHardswish):
    pass


class QActHardsigmoid(_InputQuant, ExactHardsigmoid):
    pass


class QActSigmoid(_InputQuant, ExactSigmoid):
    pass


class QActSiLU(_InputQuant, ExactSiLU):
    pass


class QReLU(nn.ReLU):
    """ReLU, then `act_quant` (unsigned, zero point 0: the QuantizeLinear that lets ORT drop the ReLU)."""

    def forward(self, x):
        return self.act_quant(super().forward(x))


_Q_ACTS = {
    nn.ReLU6: QActReLU6,
    nn.Hardswish: QActHardswish,
    nn.Hardsigmoid: QActHardsigmoid,
    nn.Sigmoid: QActSigmoid,
    nn.SiLU: QActSiLU,
    ExactHardswish: QActHardswish,
    ExactHardsigmoid: QActHardsigmoid,
    ExactSigmoid: QActSigmoid,
    ExactSiLU: QActSiLU,
}
INPUT_QUANT_ACTS = tuple(set(_Q_ACTS.values()))

# quantized or eval-matched class -> the float class (strip_quantizers)
FLOAT_OF = {
    ExactHardswish: nn.Hardswish,
    ExactHardsigmoid: nn.Hardsigmoid,
    ExactSigmoid: nn.Sigmoid,
    ExactSiLU: nn.SiLU,
    QActReLU6: nn.ReLU6,
    QActHardswish: nn.Hardswish,
    QActHardsigmoid: nn.Hardsigmoid,
    QActSigmoid: nn.Sigmoid,
    QActSiLU: nn.SiLU,
    QReLU: nn.ReLU,
}

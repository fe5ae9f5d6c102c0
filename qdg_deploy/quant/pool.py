"""A quantized input for the global average pool after the last ResNet block (scheme pool=True).

Every other residual Add of a quantized ResNet feeds the next block's convolutions, whose input quantizer makes
it an integer Add on ONNX Runtime (QLinearAdd) and TensorRT. The last block's Add feeds the global pool, which
nothing quantizes: ORT then runs that Add in float. A quantizer on the pool's input closes that gap; the pool
itself still averages in float64 in eval mode (ExportMatchedAvgPool), as the exported graph does.
"""

from __future__ import annotations

from torch import nn

from .catalog import build_quantizer
from .norms import ExportMatchedAvgPool
from .quantizers import QuantSpec
from .swap import recast, replace_module


class QAvgPool(ExportMatchedAvgPool):
    """Global average pooling of the quantized input: act_quant, then the eval-matched mean."""

    def forward(self, x):
        return super().forward(self.act_quant(x))


def _global(m: nn.Module) -> bool:
    return type(m) in (nn.AdaptiveAvgPool2d, ExportMatchedAvgPool) and m.output_size in (1, (1, 1), [1, 1])


def quantize_global_pools(model: nn.Module, act: QuantSpec) -> int:
    """Give every global AdaptiveAvgPool2d an input quantizer (the ReLU'd block output it reads: unsigned with
    zero point 0 where the spec asks for that after a ReLU); returns how many."""
    pools = [(name, m) for name, m in model.named_modules() if name and _global(m)]
    for name, old in pools:
        m = replace_module(model, name, recast(old, QAvgPool))
        m.act_quant = build_quantizer(act, after_relu=True)
    return len(pools)

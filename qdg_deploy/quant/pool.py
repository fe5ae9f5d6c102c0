"""A quantized input for the global average pool after the last ResNet block (scheme pool=True).

Every other residual Add of a quantized ResNet feeds the next block's convolutions, whose input quantizer makes
it an integer Add on ONNX Runtime (QLinearAdd) and TensorRT. The last block's Add feeds the global pool, which
nothing quantizes: ORT then runs that Add in float. A quantizer on the pool's input closes that gap. In eval
mode the pool averages in float64 (ExportMatchedAvgPool), as the exported graph does; where the plan found the one
quantizer that reads the pooled tensor (`pool_plan.out`, scheme int_bias: the classifier's input), it computes what
ORT's QLinearGlobalAveragePool computes into that quantizer (quant/kernels.fused_global_pool), and the exporter
writes DQ → GlobalAveragePool → Q, which ORT fuses into that kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.fx
from torch import nn

from .catalog import build_quantizer
from .kernels import fused_global_pool
from .norms import ExportMatchedAvgPool
from .quantizers import QuantSpec
from .swap import recast, replace_module

if TYPE_CHECKING:
    from .plan import PoolPlan


class QAvgPool(ExportMatchedAvgPool):
    """Global average pooling of the quantized input: act_quant, then the eval-matched mean."""

    pool_plan: PoolPlan | None = None  # the pool as ORT's QLinearGlobalAveragePool in eval mode (quant/plan.py)

    def forward(self, x):
        x = self.act_quant(x)
        q = self.pool_plan.out if self.pool_plan is not None else None
        if (
            q is None or self.training or isinstance(x, torch.fx.Proxy) or not bool(q.initialized)
        ):  # a calibration pass: the next quantizer takes its range from the mean
            return super().forward(x)
        return fused_global_pool(self.act_quant, q, x)


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

"""Weights as the exporter writes them: integer codes with per-channel scales, BatchNorm folded in exactly.

With per-channel scales, a following BatchNorm's factor f = gamma / sqrt(var + eps) goes into the scales
(s·|f|) and its sign into the codes, so the codes stay the trained integers. Arithmetic in float64, then
cast once to float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
from torch import nn

from ..errors import QdgError
from ..quant.bias import folded_bias
from ..quant.kernels import fold_scales, weight_scale
from ..quant.plan import layer_plan

if TYPE_CHECKING:
    from ..quant.quantizers import Quantizer


@dataclass
class FoldedWeight:
    codes: np.ndarray | None  # int8 codes (quantized weight) or None
    scales: np.ndarray | None  # float32 [C_out], positive (quantized weight) or None
    weight: np.ndarray | None  # float32 weight (float layer) or None
    bias: np.ndarray | None  # float32 [C_out] or None
    bits: int | None = None
    zero_factor: bool = False  # some channel's BN gamma is 0: its output is the constant shift, whatever the bias


def fold_layer(layer: nn.Module, bn: nn.BatchNorm2d | None, quantized: bool) -> FoldedWeight:
    """Codes/scales (or float weights) and bias of a Conv2d/Linear with an optional following BatchNorm."""
    w = layer.weight.detach()
    c = w.shape[0]
    plan = layer_plan(layer)
    if (plan.int_bias or plan.exact) and plan.bn is not bn:
        raise QdgError("the BatchNorm folded on export is not the one the layer folds in eval mode")
    factor, _, bias = folded_bias(layer, bn, plan.int_bias)
    has_bias = layer.bias is not None or bn is not None
    bias32 = bias.astype(np.float32) if has_bias else None
    wq = cast("Quantizer | None", layer.weight_quant if quantized else None)  # torch types it Tensor | Module
    if wq is None:
        wf = w.double().numpy() * factor.reshape((c,) + (1,) * (w.dim() - 1))
        return FoldedWeight(None, None, wf.astype(np.float32), bias32)
    if wq.zero_point_int() != 0:
        raise QdgError(
            f"weight zero point {wq.zero_point_int()} is not supported for export (weights must be symmetric)"
        )
    if wq.qmin < -128 or wq.qmax > 127:  # e.g. 8-bit DAQ: codes [-255, 255] (k + 1 signed bits)
        raise QdgError(
            f"{type(layer).__name__} weights quantized by {wq.spec.quantizer or 'its quantizer'} at "
            f"{wq.spec.bits} bits take codes [{wq.qmin}, {wq.qmax}], more than int8 holds (ONNX Q/DQ "
            f"weights are int8): train with --bits {wq.spec.bits - 1} or fewer"
        )
    codes = wq.integer_codes(w).numpy().astype(np.int64)
    scale = weight_scale(layer)
    sign, scales32, zero = fold_scales(scale, factor)
    codes = codes * sign.reshape((c,) + (1,) * (codes.ndim - 1))
    if zero.any():
        codes[zero] = 0  # gamma == 0: the channel's weights contribute nothing
    if codes.min() < -128 or codes.max() > 127:
        raise QdgError(
            "a negative BatchNorm gamma flips a -128 weight code to 128, which int8 cannot hold; "
            "use a narrow-range weight scheme"
        )
    if not (scales32 > 0).all() or not np.isfinite(scales32).all():
        raise QdgError("a folded weight scale is not a positive finite float32")
    # storage bits: the trained bit-width, or more where a quantizer's codes span more (DAQ: k + 1)
    bits = max(wq.spec.bits, int(np.ceil(np.log2(wq.qmax - wq.qmin + 1))))
    return FoldedWeight(codes.astype(np.int8), scales32, None, bias32, bits, bool(zero.any()))

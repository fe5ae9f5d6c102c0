"""Integer biases: what a quantized layer adds after its convolution, BatchNorm folded in.

ONNX Runtime's integer kernels (QLinearConv, QGemm) hold a bias as int32 in units of s_x · s_w (input step
times the per-channel weight step, BN factor included), so they round whatever float bias a graph gives
them. A scheme with `int_bias` (scheme `ort`; the plan's `int_bias`, quant/plan.py) puts the bias on that grid in the model itself: in eval
mode the layer adds round(b / unit) · unit instead of b, and the exporter writes that same value. ORT's
rounding then changes nothing, and the deployed integer model answers like the torch model in eval mode.
Training keeps the float bias (BatchNorm's statistics move every step); the difference is at most half a
unit, far below one step of the next quantizer.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from torch import nn

from ..errors import QdgError


def bn_factors(bn: nn.BatchNorm2d | None, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(factor, shift) in float64: bn(y) = y * factor + shift."""
    if bn is None:
        return np.ones(channels), np.zeros(channels)
    if not bn.track_running_stats or bn.running_mean is None:
        raise QdgError(f"BatchNorm without running statistics cannot be folded ({bn})")
    var = bn.running_var.detach().double().cpu().numpy()
    mean = bn.running_mean.detach().double().cpu().numpy()
    gamma = bn.weight.detach().double().cpu().numpy() if bn.affine else np.ones(channels)
    beta = bn.bias.detach().double().cpu().numpy() if bn.affine else np.zeros(channels)
    factor = gamma / np.sqrt(var + bn.eps)
    return factor, beta - mean * factor


def bias_unit(layer: nn.Module, factor: np.ndarray) -> np.ndarray:
    """The int32 grid of a quantized layer's folded bias (float64 [C]): the float32 product of the two float32
    scales the exported graph holds (input, folded weight)."""
    s_x = np.float32(layer.act_quant.scale().detach().cpu().double().item())
    c = cast(torch.Tensor, layer.weight).shape[0]
    s_w = np.broadcast_to(layer.weight_quant.scale().detach().cpu().double().numpy().reshape(-1), (c,))
    return (s_x * (s_w * np.abs(factor)).astype(np.float32)).astype(np.float64)


def folded_bias(
    layer: nn.Module, bn: nn.BatchNorm2d | None, int_grid: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(factor, shift, bias) in float64 [C]: `bn`'s factors and the layer's bias with `bn` folded in, on the
    int32 grid where `int_grid` (a layer the plan gives integer biases)."""
    c = cast(torch.Tensor, layer.weight).shape[0]
    factor, shift = bn_factors(bn, c)
    b = _own_bias(layer) * factor + shift
    if int_grid:
        unit = bias_unit(layer, factor)
        on_grid = np.round(b / np.where(unit > 0, unit, 1)) * unit
        b = np.where(unit > 0, on_grid, b)  # a zero unit (gamma == 0) leaves the constant channel as it is
    return factor, shift, b


def _own_bias(layer: nn.Module) -> np.ndarray:
    c = cast(torch.Tensor, layer.weight).shape[0]
    return layer.bias.detach().double().cpu().numpy() if layer.bias is not None else np.zeros(c)


def eval_bias(layer: nn.Module, bn: nn.BatchNorm2d | None) -> torch.Tensor:
    """The bias an integer-bias layer's own op adds in eval mode so that, after `bn`, the sum is on the grid."""
    factor, shift, b = folded_bias(layer, bn, int_grid=True)
    pre = np.where(factor != 0, (b - shift) / np.where(factor != 0, factor, 1), _own_bias(layer))  # undo BN's affine
    return torch.as_tensor(pre, dtype=layer.weight.dtype, device=layer.weight.device)

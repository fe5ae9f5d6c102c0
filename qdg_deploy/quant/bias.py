"""Integer biases: what a quantized layer adds after its convolution, BatchNorm folded in.

ONNX Runtime's integer kernels (QLinearConv, QGemm) hold a bias as int32 in units of s_x · s_w (input step
times the per-channel weight step, BN factor included), so they round whatever float bias a graph gives
them. A scheme with `int_bias` (scheme `ort`) puts the bias on that grid in the model itself: in eval
mode the layer adds round(b / unit) · unit instead of b, and the exporter writes that same value. ORT's
rounding then changes nothing, and the deployed integer model answers like the torch model in eval mode.
Training keeps the float bias (BatchNorm's statistics move every step); the difference is at most half a
unit, far below one step of the next quantizer.
"""

from __future__ import annotations

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


def bias_unit(layer: nn.Module, factor: np.ndarray) -> np.ndarray | None:
    """The int32 grid of the layer's folded bias (float64 [C]), or None where the bias stays float.

    The float32 product of the two float32 scales the exported graph holds (input, folded weight)."""
    aq, wq = getattr(layer, "act_quant", None), getattr(layer, "weight_quant", None)
    if not getattr(layer, "int_bias", False) or aq is None or wq is None:
        return None
    s_x = np.float32(aq.scale().detach().cpu().double().item())
    c = layer.weight.shape[0]
    s_w = np.broadcast_to(wq.scale().detach().cpu().double().numpy().reshape(-1), (c,))
    return (s_x * (s_w * np.abs(factor)).astype(np.float32)).astype(np.float64)


def folded_bias(layer: nn.Module, bn: nn.BatchNorm2d | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(factor, shift, bias) in float64 [C]: `bn`'s factors and the layer's bias with `bn` folded in, on the
    int32 grid where the layer has int_bias."""
    c = layer.weight.shape[0]
    factor, shift = bn_factors(bn, c)
    b = _own_bias(layer) * factor + shift
    unit = bias_unit(layer, factor)
    if unit is not None:
        on_grid = np.round(b / np.where(unit > 0, unit, 1)) * unit
        b = np.where(unit > 0, on_grid, b)  # a zero unit (gamma == 0) leaves the constant channel as it is
    return factor, shift, b


def _own_bias(layer: nn.Module) -> np.ndarray:
    c = layer.weight.shape[0]
    return layer.bias.detach().double().cpu().numpy() if layer.bias is not None else np.zeros(c)


def eval_bias(layer: nn.Module) -> torch.Tensor | None:
    """The bias the layer's own op adds in eval mode so that, after its BatchNorm, the sum is on the grid."""
    factor, shift, b = folded_bias(layer, getattr(layer, "bias_bn", None))
    pre = np.where(factor != 0, (b - shift) / np.where(factor != 0, factor, 1), _own_bias(layer))  # undo BN's affine
    return torch.as_tensor(pre, dtype=layer.weight.dtype, device=layer.weight.device)


def attach_int_bias(model: nn.Module, bn_of: dict[str, nn.BatchNorm2d]) -> int:
    """Mark every quantized layer with a per-tensor input quantizer for int32 biases; `bn_of` names the
    BatchNorm that follows a layer (its factor is part of the grid). Returns how many were marked."""
    from .layers import QConv2d, QLinear

    n = 0
    for name, m in model.named_modules():
        if not isinstance(m, (QConv2d, QLinear)) or m.act_quant is None or m.weight_quant is None:
            continue
        if getattr(m.act_quant, "transform", None) or m.act_quant.scale().numel() != 1:
            continue
        m.int_bias = True
        object.__setattr__(m, "bias_bn", bn_of.get(name))  # a plain attribute: not a second state-dict entry
        n += 1
    return n

"""Eval arithmetic of snapped layers and of ORT's integer kernels: each quantized layer's output snapped to its integer accumulator, BatchNorm folded in.

A quantized layer with a quantized input computes, in exact arithmetic, acc · s_x · s_w: acc = Σ q_x · q_w is an
integer. A float convolution gets acc · s_x · s_w only up to a few ulps, and torch (oneDNN) and ONNX Runtime
(MLAS) sum in different orders, so their results differ in the last bits; the next quantizer then rounds a value
that sits near a tie to different codes, and the two runtimes disagree. So in eval mode the layer snaps its
output to the grid,

    acc = round(conv(x_q, w_q) / unit)        (an integer: the float error is far below half a unit)
    y   = acc · unit_f + bias_f               (BatchNorm folded: unit_f = s_x · s_w·|γ/σ|, acc's sign flipped for γ < 0)

and the exported graph computes the same ops (Conv → Div → Round → Mul → Add) on the same float32 constants, so
both runtimes produce the same float32 values whatever order they sum in: every later op (ReLU, Add, pooling,
the next QuantizeLinear) then sees identical inputs. The folded BatchNorm is an identity in eval mode.

Training keeps the float path (BatchNorm statistics move every step; the two differ by float round-off only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.fx
from torch import nn

from .bias import folded_bias
from .quantizers import Quantizer


def fold_scales(scale: np.ndarray, factor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel weight scales with a BatchNorm factor folded in: (sign, float32 scale, zero-factor mask).

    The factor's magnitude goes into the scale and its sign into the codes; a gamma-0 channel keeps its scale
    (its codes become 0)."""
    sign = np.where(factor < 0, -1, 1)
    new = scale * np.abs(factor)
    zero = new == 0
    return sign, np.where(zero, scale, new).astype(np.float32), zero


@dataclass
class Grid:
    unit0: torch.Tensor  # float32 [C]: s_x · s_w, the unit of the unfolded accumulator
    mult: torch.Tensor  # float32 [C]: sign of the BN factor, 0 where it is 0
    unit: torch.Tensor  # float32 [C]: s_x · folded s_w, what the graph multiplies the accumulator by
    bias: torch.Tensor | None  # float32 [C]: the folded bias


def weight_scale(layer: nn.Module) -> np.ndarray:
    """The weight quantizer's step per output channel, float64 (the float32 values it computes with)."""
    c = cast(torch.Tensor, layer.weight).shape[0]
    s = layer.weight_quant.scale().detach().double().cpu().numpy().reshape(-1)
    return np.broadcast_to(s, (c,)).copy()


def grid(layer: nn.Module) -> Grid:
    """The layer's snap grid and folded bias, as the exporter writes them (call after a weight_quant forward:
    quantizers whose step follows the weights refresh it there)."""
    bn = layer.plan.bn
    factor, _, b = folded_bias(layer, bn, layer.plan.int_bias)
    s_x = np.float32(layer.act_quant.scale().detach().reshape(-1)[0].item())
    s_w = weight_scale(layer)
    sign, s_wf, zero = fold_scales(s_w, factor)
    dev = layer.weight.device
    t = lambda a: torch.as_tensor(np.asarray(a, np.float32), device=dev)  # noqa: E731
    has_bias = layer.bias is not None or bn is not None
    return Grid(
        unit0=t(s_x * s_w.astype(np.float32)),
        mult=t(np.where(zero, 0, sign)),
        unit=t(s_x * s_wf),
        bias=t(b) if has_bias else None,
    )


def _accumulator(layer: nn.Module, x: torch.Tensor, op) -> tuple[torch.Tensor, Grid, tuple]:
    """The folded integer accumulator (float32, sign of the BN factor applied), the grid, and the channel shape."""
    xq = layer.act_quant(x)
    wq = layer.weight_quant(layer.weight)
    g = grid(layer)
    shape = (-1,) + (1,) * (wq.dim() - 2) if wq.dim() > 2 else (-1,)
    return torch.round(op(xq, wq) / g.unit0.reshape(shape)) * g.mult.reshape(shape), g, shape


def exact_eval(layer: nn.Module, x: torch.Tensor, op) -> torch.Tensor:
    """The eval output of an exact layer (is_exact); op(x, w) is its float op without bias (conv or linear)."""
    q = layer.plan.out_quant
    # an unset output quantizer is a calibration pass: it takes its range from the snapped float output
    return fused_forward(layer, x, op) if q is not None and bool(q.initialized) else exact_forward(layer, x, op)


def exact_forward(layer: nn.Module, x: torch.Tensor, op) -> torch.Tensor:
    """A snapped layer's eval output: the accumulator times the folded unit, plus the folded bias."""
    acc, g, shape = _accumulator(layer, x, op)
    y = acc * g.unit.reshape(shape)
    return y + g.bias.reshape(shape) if g.bias is not None else y


def fused_forward(layer: nn.Module, x: torch.Tensor, op) -> torch.Tensor:
    """The eval output of a layer ONNX Runtime runs as QLinearConv / QGemm into its output quantizer
    (`layer.plan.out_quant`, quant/ort_fusion.py): what that kernel computes, then dequantized.

    The kernel sums acc + bias in int32 (exact; the bias is on the int32 grid, quant/bias.py) and requantizes
    in float32: code = saturate(round_half_even(float(acc) · M) + z_y) with M = float32(s_x · s_w) / s_y,
    computed in that order (measured bit for bit against ORT 1.32's x86 MLAS kernels on a VNNI CPU, 0 of 5 M codes differ;
    M computed any other way misses a few). The ReLU between the layer and its quantizer (zero point 0) is
    the saturation at 0; a MaxPool after it commutes. The output sits on the quantizer's grid, so the
    quantizer itself, applied next, changes nothing."""
    q = layer.plan.out_quant
    acc, g, shape = _accumulator(layer, x, op)
    if g.bias is not None:
        acc = acc + torch.round(g.bias / g.unit).reshape(shape)
    s_y, z_y = q.scale().reshape(()), q.zero_point_int()
    code = torch.clamp(torch.round(acc * (g.unit / s_y).reshape(shape)) + z_y, q.qmin, q.qmax)
    return (code - z_y) * s_y


def _fma32(x: torch.Tensor, y: float, z) -> torch.Tensor:
    """float32 fused multiply-add x·y + z with one rounding (exact in float64 for these small operands)."""
    return (x.double() * y + z).float()


def fused_add(qa: Quantizer, qb: Quantizer, qc: Quantizer, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b as ONNX Runtime's QLinearAdd computes it (x86 MLAS, its AVX2 kernel), a and b on their quantizers' grids,
    quantized by qc (a ReLU before qc, zero point 0, is its saturation at 0), then dequantized.

    The kernel works on the codes with r = float32(s / s_c): c = fma(k_a, r_a, fma(k_b, r_b, f)), with the fixed
    part f = float32(z_c − fma(z_a, r_a, r_b·z_b)), rounded half to even and saturated (measured: 0 of 20 M
    codes differ; without the fused multiply-adds 37 do)."""
    f32 = np.float32
    sa, sb, sc = (f32(q.scale().reshape(()).item()) for q in (qa, qb, qc))
    za, zb, zc = qa.zero_point_int(), qb.zero_point_int(), qc.zero_point_int()
    ka = torch.round(a / float(sa)) + za
    kb = torch.round(b / float(sb)) + zb
    ra, rb = f32(sa / sc), f32(sb / sc)
    fixed = f32(f32(zc) - f32(np.float64(za) * np.float64(ra) + np.float64(f32(rb * f32(zb)))))
    c = _fma32(ka, float(ra), _fma32(kb, float(rb), float(fixed)).double())
    code = torch.clamp(torch.round(c), qc.qmin, qc.qmax)
    return (code - zc) * torch.as_tensor(sc)


def fused_global_pool(qx: Quantizer, qy: Quantizer, x: torch.Tensor) -> torch.Tensor:
    """The global average of x (on qx's grid) as ONNX Runtime's QLinearGlobalAveragePool computes it (x86 MLAS),
    quantized by qy, then dequantized (shape [N, C, 1, 1]).

    The kernel sums the codes in int32 (exact), removes the zero point, and requantizes in float32 with one scale
    computed in this order: m = float32(s_x / float32(s_y · float32(H·W))); code = saturate(round_half_even(
    float32(acc) · m) + z_y). uint8 codes shift a signed grid by 128; the shift cancels in acc."""
    f32 = np.float32
    sx, sy = (f32(q.scale().reshape(()).item()) for q in (qx, qy))
    hw = x.shape[-1] * x.shape[-2]
    m = f32(sx / f32(sy * f32(hw)))
    k = torch.round(x / float(sx))  # the codes minus the zero point: x sits on qx's grid
    acc = k.double().sum(dim=(2, 3), keepdim=True).float()  # an integer below 2^24: exact in float32
    zy = qy.zero_point_int()
    code = torch.clamp(torch.round(acc * torch.tensor(m)) + zy, qy.qmin, qy.qmax)
    return (code - zy) * torch.as_tensor(sy)


def residual_add(add, training: bool, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A ResNet block's residual Add: in eval mode as ORT's QLinearAdd where the plan has one (`add`, an AddPlan)."""
    if (
        add is None
        or training
        or isinstance(a, torch.fx.Proxy)  # fx traces the Add itself
        or not bool(add.out.initialized)
    ):  # a calibration pass: the next quantizer takes its range from a + b
        return a + b
    return fused_add(add.main, add.identity, add.out, a, b)

"""Transformers (timm ViT / DeiT, ConvNeXt) in the quantization schemes.

* `paper` (QT-DoG): the reference's "whole network" LSQ mapping — W7 per-channel on every Linear and on the
  convolutions (the patch embedding, ConvNeXt's stem / depthwise / downsampling convs); norms and activations
  float; the classifier float, as the CNN `paper` scheme leaves it (`adapt_scheme`).
* `trt` / `ort` (W8A8): an input quantizer on every Linear (quantize_model), and on both operands of each
  attention matmul, q·kᵀ and softmax·v (`QMatMul`). LayerNorm, Softmax and GELU stay float. This is the placement
  of NVIDIA's ModelOpt INT8_DEFAULT_CFG (an 8-bit per-tensor `input_quantizer` and an 8-bit axis-0
  `weight_quantizer` on every Linear / Conv, outputs not quantized) plus its batched-matmul input quantizers,
  and what TensorRT's developer guide asks of explicit quantization: Q/DQ on the inputs of the operations to run
  in INT8 (GEMMs and the attention BMMs), none on normalisation / softmax outputs (docs/transformers.md).

Attention runs timm's non-fused path (`fused_attn = False`: q @ kᵀ, softmax, @ v as explicit ops) so that the
matmuls can be quantized, traced and exported one by one. In eval mode a QMatMul snaps its output to the integer
accumulator grid s_a·s_b (as snapped Conv/Linear layers do, quant/kernels.py), so torch and any runtime hold the
same float32 values whatever order they sum in.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QdgError
from .catalog import build_quantizer
from .quantizers import QuantSpec
from .schemes import Scheme
from .swap import recast, replace_module


def _timm_attention() -> tuple[type, ...]:
    try:
        from timm.layers import Attention
    except ImportError:  # timm is optional: no timm model can be in the network then
        return ()
    return (Attention,)


def is_transformer(model: nn.Module) -> bool:
    """A network with LayerNorm (ViT / DeiT / ConvNeXt): Linear layers are part of its body, not only its head."""
    return any(isinstance(m, nn.LayerNorm) for m in model.modules())


def adapt_scheme(model: nn.Module, scheme: Scheme) -> Scheme:
    """`paper` on a transformer: every Linear quantized too (the reference's whole-network mapping), the
    classifier (the last Linear) left float as on CNNs."""
    if scheme.name == "paper" and "linear" not in scheme.layers and is_transformer(model):
        return replace(scheme, layers=(*scheme.layers, "linear"), quantize_last=False)
    return scheme


class QMatMul(nn.Module):
    """a @ b with both operands fake-quantized (per tensor); in eval mode the product is snapped to its integer
    accumulator (round(y / (s_a·s_b)) · s_a·s_b). A leaf for torch.fx (`fx_leaf`), written by the exporter as
    Q/DQ, Q/DQ, MatMul and the snap."""

    fx_leaf = True

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.a_quant = build_quantizer(spec)
        self.b_quant = build_quantizer(spec)

    def unit(self) -> torch.Tensor:
        """float32 s_a · s_b (a scalar): the value of one accumulator step, as the exported graph holds it."""
        return (self.a_quant.scale().reshape(()) * self.b_quant.scale().reshape(())).detach()

    def snapped(self) -> bool:
        """Eval mode with both quantizers set and quantizing (not observing a float pass: calibrate/ptq)."""
        qs = (self.a_quant, self.b_quant)
        return not self.training and all(bool(q.initialized) and getattr(q, "observe", None) is None for q in qs)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = self.a_quant(a) @ self.b_quant(b)
        if self.snapped():
            u = self.unit()
            y = torch.round(y / u) * u
        return y


def attention_forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
    """timm Attention's non-fused path with the two matmuls quantized (`qk`, `av`)."""
    if attn_mask is not None or is_causal:
        raise QdgError("quantized attention takes no mask (ViT / DeiT classification attends to every token)")
    B, N, _ = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    attn = self.qk(q * self.scale, k.transpose(-2, -1))
    # eval: softmax in float64, one rounding to float32, as the exported graph computes it (the next quantizer
    # then sees the same values in both runtimes; float32 exp differs by ulps between torch and ORT)
    attn = attn.softmax(dim=-1) if self.training else attn.double().softmax(dim=-1).float()
    attn = self.attn_drop(attn)
    x = self.av(attn, v)
    x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))
    return self.proj_drop(self.proj(x))


_QCLASSES: dict[type, type] = {}


def _quantized_class(cls: type) -> type:
    """A subclass of timm's Attention class whose forward quantizes both matmuls (made once per class)."""
    if cls not in _QCLASSES:
        _QCLASSES[cls] = type(f"Q{cls.__name__}", (cls,), {"forward": attention_forward, "float_class": cls})
    return _QCLASSES[cls]


def is_quantized_attention(m: nn.Module) -> bool:
    return type(m) in _QCLASSES.values()


# Abramowitz & Stegun 7.1.26: erf(z) = 1 − (a1·t + … + a5·t⁵)·exp(−z²), t = 1/(1 + p·z), z ≥ 0 (|error| < 1.5e-7)
ERF_P = 0.3275911
ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf64(z: torch.Tensor) -> torch.Tensor:
    """erf in float64 from + − × ÷ and exp, the ops ONNX Runtime has in double (its Erf is float32 only)."""
    a = z.abs()
    t = 1.0 / (1.0 + ERF_P * a)
    poly: torch.Tensor | float = ERF_A[4]
    for c in ERF_A[3::-1]:
        poly = poly * t + c
    return torch.sign(z) * (1.0 - poly * t * torch.exp(-(a * a)))


class ExactGELU(nn.Module):
    """GELU that, in eval mode, computes in float64 and rounds once to float32 (the erf form through erf64, the
    tanh form with a float64 tanh): the exported graph computes the same ops in double, so the quantizer that reads
    the output sees the same float32 values in torch and ONNX Runtime. Training: torch's float GELU."""

    fx_leaf = True

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.gelu(x, approximate=self.approximate)
        d = x.double()
        if self.approximate == "tanh":
            inner = (d + 0.044715 * d * d * d) * math.sqrt(2 / math.pi)
            return (0.5 * d * (1.0 + torch.tanh(inner))).float()
        return (0.5 * d * (1.0 + erf64(d * (1 / math.sqrt(2))))).float()


class ExactLayerNorm(nn.LayerNorm):
    """LayerNorm (or timm's channels-first LayerNorm2d: `channels_first`) that in eval mode computes its moments
    and the normalisation in float64 and rounds once to float32, as the exported graph does (see ExactGELU)."""

    fx_leaf = True
    channels_first = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            x = x.permute(0, 2, 3, 1)
        if self.training:
            y = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        else:
            dims = tuple(range(-len(self.normalized_shape), 0))
            d = x.double()
            mean = d.mean(dim=dims, keepdim=True)
            c = d - mean
            var = (c * c).mean(dim=dims, keepdim=True)
            y = c / torch.sqrt(var + self.eps)
            if self.weight is not None:
                y = y * self.weight.double()
            if self.bias is not None:
                y = y + self.bias.double()
            y = y.float()
        return y.permute(0, 3, 1, 2) if self.channels_first else y


def _exact_norms_and_gelu(model: nn.Module) -> None:
    """LayerNorm and GELU modules to their float64-in-eval forms (quantized models: a quantizer reads them)."""
    for name, m in list(model.named_modules()):
        if not name or type(m) in (ExactLayerNorm, ExactGELU):
            continue
        last, first = _norm_forwards()
        if isinstance(m, nn.LayerNorm) and type(m).forward in last + first:
            new = recast(m, ExactLayerNorm)
            # the ignores: torch types Module.__setattr__'s value as Tensor | Module
            new.float_class, new.channels_first = type(m), type(m).forward in first  # type: ignore[assignment]
            replace_module(model, name, new)
        elif type(m).__name__ == "GELU" and isinstance(m, nn.Module):
            new = ExactGELU(getattr(m, "approximate", "none"))
            new.float_class, new.float_state = type(m), dict(m.__dict__)  # type: ignore[assignment]  # as above
            new.train(m.training)
            replace_module(model, name, new)


def _norm_forwards() -> tuple[tuple, tuple]:
    """(channels-last, channels-first) LayerNorm forwards ExactLayerNorm reproduces: torch's and timm's plain
    LayerNorm, timm's LayerNorm2d (permute, layer_norm, permute back)."""
    try:
        from timm.layers import LayerNorm, LayerNorm2d
    except ImportError:
        return (nn.LayerNorm.forward,), ()
    return (nn.LayerNorm.forward, LayerNorm.forward), (LayerNorm2d.forward,)


def prepare(model: nn.Module, scheme: Scheme) -> None:
    """Every timm Attention to its non-fused path; with activation quantization, to a quantized-matmul one, and
    LayerNorm / GELU to their exact-export forms."""
    if scheme.act is not None:
        _exact_norms_and_gelu(model)
    attn_types = _timm_attention()
    if not attn_types:
        return
    for name, m in list(model.named_modules()):
        if not isinstance(m, attn_types):
            continue
        m.fused_attn = False
        if scheme.act is None or is_quantized_attention(m):
            continue
        for attr in ("gate", "rope"):  # variants (gated / rotary attention) the forward above does not compute
            if getattr(m, attr, None) is not None:
                raise QdgError(
                    f"unsupported operation: attention {name!r} with {attr} (only plain ViT attention can be quantized)"
                )
        if not hasattr(m, "attn_dim"):
            m.attn_dim = m.num_heads * m.head_dim
        q = recast(m, _quantized_class(type(m)))
        q.qk = QMatMul(scheme.act)
        q.av = QMatMul(scheme.act)
        replace_module(model, name, q) if name else None


def strip(m: nn.Module) -> nn.Module | None:
    """The float module for a quantized attention, an ExactLayerNorm or an ExactGELU (strip_quantizers), else None."""
    if is_quantized_attention(m):
        return recast(m, type(m).float_class, drop=("qk", "av"))
    if type(m) is ExactLayerNorm:
        new = recast(m, m.float_class)
        for k in ("float_class", "channels_first"):
            new.__dict__.pop(k, None)
        return new
    if type(m) is ExactGELU:
        new = m.float_class.__new__(m.float_class)
        new.__dict__.update(m.float_state)
        new.training = m.training
        return new
    return None

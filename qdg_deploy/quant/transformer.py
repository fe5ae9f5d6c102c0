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

from dataclasses import replace

import torch
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
    attn = self.attn_drop(attn.softmax(dim=-1))
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


def prepare(model: nn.Module, scheme: Scheme) -> None:
    """Every timm Attention to its non-fused path; with activation quantization, to a quantized-matmul one."""
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
                raise QdgError(f"unsupported operation: attention {name!r} with {attr} (only plain ViT attention "
                               f"can be quantized)")
        if not hasattr(m, "attn_dim"):
            m.attn_dim = m.num_heads * m.head_dim
        q = recast(m, _quantized_class(type(m)))
        q.qk = QMatMul(scheme.act)
        q.av = QMatMul(scheme.act)
        replace_module(model, name, q) if name else None


def strip(m: nn.Module) -> nn.Module | None:
    """The float Attention for a quantized one (strip_quantizers), else None."""
    if not is_quantized_attention(m):
        return None
    return recast(m, type(m).float_class, drop=("qk", "av"))

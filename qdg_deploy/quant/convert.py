"""Swap a float model's Conv2d / Linear layers for quantized ones, as a scheme says; and back (`strip_quantizers`)."""

from __future__ import annotations

import copy

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from . import activations, mobile, transformer
from .layers import QUANT_LAYERS, QConv2d, QLinear, QuantMixin
from .norms import EVAL_MATCHED, ExportMatchedAvgPool, ExportMatchedGroupNorm, FoldedBatchNorm2d
from .plan import PLAN_ATTRS, build_plan
from .pool import QAvgPool, quantize_global_pools
from .residual import QBasicBlock, QBottleneck, quantize_residual_blocks
from .schemes import Scheme
from .swap import recast, replace_module
from .tracing import relu_fed_layers

_LAYER_KIND = {nn.Conv2d: "conv", nn.Linear: "linear"}


def eligible_layers(model: nn.Module, scheme: Scheme) -> list[str]:
    """Names of the layers the scheme quantizes, in registration (forward) order."""
    scheme = transformer.adapt_scheme(model, scheme)  # `paper` on a ViT / ConvNeXt: its Linears too
    layers = [(name, m) for name, m in model.named_modules() if type(m) in _LAYER_KIND]
    keep = []
    for i, (name, m) in enumerate(layers):
        if _LAYER_KIND[type(m)] not in scheme.layers or name in scheme.float_layers:
            continue
        if (i == 0 and not scheme.quantize_first) or (i == len(layers) - 1 and not scheme.quantize_last):
            continue
        keep.append(name)
    return keep


def quantize_model(model: nn.Module, scheme: Scheme) -> nn.Module:
    """Replace eligible layers in place (sharing their weight Parameters), then plan how each runs in eval mode
    and exports (quant/plan.py); returns the model."""
    mobile.adapt_timm(model)  # timm's fused norm-act, Linear and SE modules in forms the exporter lowers
    after_relu = relu_fed_layers(model) if scheme.act and scheme.act.zero_point == "relu" else set()
    first = next((n for n, m in model.named_modules() if type(m) in _LAYER_KIND), None)
    for name in eligible_layers(model, scheme):
        layer = model.get_submodule(name)
        act = scheme.act if (scheme.act_first or name != first) else None
        replace_module(
            model, name, QUANT_LAYERS[type(layer)].from_float(layer, scheme.weight, act, after_relu=name in after_relu)
        )
    transformer.prepare(model, scheme)  # timm attention: explicit matmuls, quantized with the activations
    if scheme.residual and scheme.act is not None:
        if quantize_residual_blocks(model, scheme.act) and scheme.pool:
            quantize_global_pools(model, scheme.act)
    if scheme.act is not None:  # mobile CNNs' activations: eval arithmetic as the graph's (quant/mobile.py)
        mobile.exact_activations(model)
        mobile.quantize_conv_outputs(model, scheme)
    for name, m in list(model.named_modules()):  # eval arithmetic as the exported graph's (same state dict)
        # A weight-only model has no quantizer after its pool whose rounding a float32 sum's order could move: its
        # pool stays float32 (GlobalAveragePool, as fast as the FP32 export's) rather than a float64 mean.
        if type(m) is nn.AdaptiveAvgPool2d and scheme.act is None:
            continue
        if type(m) in EVAL_MATCHED:
            replace_module(model, name, recast(m, EVAL_MATCHED[type(m)]))
    build_plan(model, int_bias=scheme.int_bias and scheme.act is not None)
    return model


# quantized module class -> the float class it was made from
_FLOAT_OF: dict[type[nn.Module], type[nn.Module]] = {
    QConv2d: nn.Conv2d,
    QLinear: nn.Linear,
    QBasicBlock: BasicBlock,
    QBottleneck: Bottleneck,
    FoldedBatchNorm2d: nn.BatchNorm2d,
    ExportMatchedGroupNorm: nn.GroupNorm,
    ExportMatchedAvgPool: nn.AdaptiveAvgPool2d,
    QAvgPool: nn.AdaptiveAvgPool2d,
    **activations.FLOAT_OF,
}
_QUANT_STATE = ("weight_quant", "act_quant", "add_quant", "id_quant", "shared_input", *PLAN_ATTRS)


def strip_quantizers(model: nn.Module) -> nn.Module:
    """A copy of the network with every quantizer removed: the float architecture `build_model` makes, holding
    the same float weights (the FP32 baseline of export --format onnx-fp32 and bench's torch-fp32)."""
    net = copy.deepcopy(model)
    for name, m in list(net.named_modules()):
        cls = _FLOAT_OF.get(type(m))
        float_m = recast(m, cls, drop=_QUANT_STATE) if cls is not None else transformer.strip(m)
        if float_m is None:
            continue
        if name:
            replace_module(net, name, float_m)
        else:
            net = float_m
    return net.eval()


def quant_layers(model: nn.Module) -> dict[str, QuantMixin]:
    """Name -> quantized layer (QConv2d, QLinear), in registration order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QConv2d, QLinear))}


def is_quantized(model: nn.Module) -> bool:
    return bool(quant_layers(model))


def model_size(model: nn.Module) -> dict:
    """fp32 bytes, packed bytes (codes at their true bit-width plus scales) and parameter count.

    Quantizer steps/zero points count as float32 in packed bytes; buffers such as BN statistics count too.
    """
    qlayers = quant_layers(model)
    qweights = {id(m.weight): m for m in qlayers.values() if m.weight_quant is not None}
    params = 0
    fp32 = packed = 0.0
    for name, p in model.named_parameters():
        if any(f".{q}." in name for q in ("weight_quant", "act_quant", "add_quant", "id_quant", "a_quant", "b_quant")):
            packed += p.numel() * 4
            continue
        params += p.numel()
        fp32 += p.numel() * 4
        layer = qweights.get(id(p))
        packed += p.numel() * layer.weight_quant.spec.bits / 8 if layer is not None else p.numel() * 4
    for name, b in model.named_buffers():
        if b.is_floating_point():
            fp32 += b.numel() * 4
            packed += b.numel() * 4
    return {"params": params, "fp32_bytes": int(fp32), "packed_bytes": int(round(packed))}

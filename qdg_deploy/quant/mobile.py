"""The activations of mobile CNNs (ReLU6, Hardswish, Hardsigmoid, SiLU, Sigmoid) in quantized models.

Exact eval arithmetic. ONNX Runtime's HardSwish, HardSigmoid and Sigmoid kernels round differently from torch's
(measured, ORT 1.32 against torch 2.14 on 4 M random floats: 24 %, 17 % and 68 % of float32 results differ in
the last bits; even ORT's float64 Sigmoid is off by up to 9e-4 relative), and a last-bit difference can move a
value across the next quantizer's rounding tie. So a quantized model computes these activations in eval mode
from ops every runtime rounds the same way (IEEE add, mul, div, clip; and exp in float64, whose last-bit
differences between torch and ORT moved none of 24 M float32 results):

    hardswish(x)   = x · clip(x + 3, 0, 6) / 6                       (float32)
    hardsigmoid(x) = clip(x + 3, 0, 6) / 6                           (float32)
    sigmoid(x)     = float32(1 / (1 + exp(−x)))                      (float64 inside)
    silu(x)        = float32(x · (1 / (1 + exp(−x))))                (float64 inside)

and the exporter writes the same ops (export/lower_mobile.py). Training uses torch's own kernels.

Scheme `ort`: ONNX Runtime fuses DequantizeLinear → Conv → QuantizeLinear into QLinearConv only when a
QuantizeLinear alone reads the conv's output (through a ReLU it can drop). A conv followed by one of these
activations has none, so ORT would run it in float. Such an activation gets a quantizer on its input
(`QAct*`: the conv's output quantizer, with a learned zero point as the data is signed), and a ReLU whose output
no single quantizer reads (a squeeze-and-excitation block's input: read by the pool and the multiply) one on its
output (`QReLU`, unsigned with zero point 0, which lets ORT drop the ReLU). The plan (quant/plan.py) then runs
that conv as ORT's QLinearConv in eval mode. Scheme `trt` adds none: TensorRT fuses the activation into the
convolution itself.
"""

from __future__ import annotations

import operator
from typing import cast

import torch
import torch.fx
from torch import nn

from .activations import _Q_ACTS, EXACT_ACTS, QReLU
from .catalog import build_quantizer
from .layers import QConv2d, QLinear
from .schemes import Scheme
from .swap import recast, replace_module


def exact_activations(model: nn.Module) -> int:
    """Swap every (exact-type) Hardswish, Hardsigmoid, Sigmoid and SiLU for its eval-matched class; returns how many."""
    found = [(n, m) for n, m in model.named_modules() if n and type(m) in EXACT_ACTS]
    for name, m in found:
        replace_module(model, name, recast(m, EXACT_ACTS[type(m)]))
    return len(found)


def _conv_outputs(gm: torch.fx.GraphModule, mods) -> list[torch.fx.Node]:
    """For each quantized conv / linear with a quantized input: the node of its output (its BatchNorm's, when
    one BatchNorm alone reads it)."""
    from .tracing import conv_bn_pairs

    bn_of = conv_bn_pairs(gm, mods)
    out = []
    for n in gm.graph.nodes:
        m = mods.get(n.target) if n.op == "call_module" else None
        if isinstance(m, (QConv2d, QLinear)) and m.act_quant is not None and m.weight_quant is not None:
            out.append(bn_of.get(n.name, n))
    return out


def _feeds_gate(n: torch.fx.Node) -> bool:
    """Whether a multiply reads n's output (a squeeze-and-excitation block's input). Only there does a ReLU get an
    output quantizer: networks without such blocks keep the quantizers (and state-dict keys) they always had."""
    return any(
        (u.op == "call_function" and u.target in (operator.mul, torch.mul))
        or (u.op == "call_method" and u.target == "mul")
        for u in n.users
    )


def quantize_conv_outputs(model: nn.Module, scheme: Scheme) -> int:
    """Scheme `ort`: give the activation after each quantized conv an input quantizer (a ReLU whose output no
    single quantizer reads: an output quantizer), where no quantizer reads the conv's output yet, so that ORT
    runs the conv as QLinearConv. Returns how many activations were swapped."""
    from ..errors import QdgError
    from .ort_fusion import output_quantizer
    from .tracing import trace

    if scheme.act is None or not scheme.int_bias:
        return 0
    try:
        gm = trace(model)
    except QdgError:  # an untraceable model keeps its float activations (correct, only slower on ORT)
        return 0
    mods = dict(model.named_modules())
    swapped = 0
    for n in _conv_outputs(gm, mods):
        users = list(n.users)
        if len(users) != 1 or users[0].op != "call_module" or output_quantizer(n, mods) is not None:
            continue
        name = users[0].target
        act = mods[name]
        if type(act) in _Q_ACTS:
            new = replace_module(model, name, recast(act, _Q_ACTS[type(act)]))
            new.act_quant = build_quantizer(scheme.act, after_relu=False)
            if hasattr(new, "inplace"):  # in training the quantizer's backward reads its output: never overwrite it
                new.inplace = False  # type: ignore[assignment]  # torch types __setattr__ values Tensor | Module
        elif type(act) is nn.ReLU and _feeds_gate(users[0]):
            new = replace_module(model, name, recast(act, QReLU))
            new.act_quant = build_quantizer(scheme.act, after_relu=True)
        else:
            continue
        mods[name] = new
        swapped += 1
    return swapped


# --- timm's modules, in the forms the tracer, the plan and the writer know (state-dict keys unchanged) ---


class SplitNormAct(nn.Module):
    """timm's BatchNormAct2d (BatchNorm, dropout and activation in one module, holding the BatchNorm's tensors
    itself) as BatchNorm → drop → act, the BatchNorm a child `bn` the conv before it can fold. `bn` holds no state
    of its own (it reads this module's tensors), so the state dict keeps timm's keys."""

    def forward(self, x):
        x = self.bn(x)
        for k in ("drop", "act"):  # an Identity is left out (fusion reads a conv's output through its readers)
            if k in self._modules:
                x = self._modules[k](x)
        return x

    def _apply(self, fn, *args, **kwargs):  # .to(device) replaces buffers: the view reads the new ones
        out = super()._apply(fn, *args, **kwargs)
        _share(self, self._modules["bn"])
        return out


_BN_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _share(owner: nn.Module, view: nn.Module) -> None:
    for k in _BN_STATE:
        object.__setattr__(view, k, getattr(owner, k, None))


def _no_load(*args, **kwargs) -> None:
    """The view's loader: its owner loads the tensors (BatchNorm's own would add a num_batches_tracked key)."""


def _split_norm_act(m: nn.Module) -> SplitNormAct:
    view = nn.BatchNorm2d.__new__(nn.BatchNorm2d)
    view.__dict__.update({k: v for k, v in m.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")})
    view._parameters, view._buffers, view._modules = {}, {}, {}
    view.__dict__["_load_from_state_dict"] = _no_load  # an instance attribute: kept when the plan recasts the view
    _share(m, view)
    new = recast(m, SplitNormAct)
    for k in ("drop", "act"):
        if type(new._modules.get(k)) is nn.Identity:
            del new._modules[k]  # no state: the state dict is unchanged
    new._modules["bn"] = view
    return cast(SplitNormAct, new)  # recast returns a `cls` object


class ExactSqueezeExcite(nn.Module):
    """timm's SqueezeExcite with its spatial mean as a global-pool module (`pool`, no state), which a quantized
    model computes as the exported graph does (quant/norms.ExportMatchedAvgPool)."""

    def forward(self, x):
        x_se = self.act1(self.conv_reduce(self.pool(x)))
        return x * self.gate(self.conv_expand(x_se))


def adapt_timm(model: nn.Module) -> int:
    """Recast timm's BatchNormAct2d, Linear and SqueezeExcite modules into forms the exporter lowers (same
    parameters, same state-dict keys, same outputs); returns how many. Other models are left as they are."""
    found = 0
    for name, m in list(model.named_modules()):
        mod = type(m).__module__
        if not name or not mod.startswith("timm."):
            continue
        if isinstance(m, nn.BatchNorm2d) and "act" in m._modules and type(m).__name__ == "BatchNormAct2d":
            replace_module(model, name, _split_norm_act(m))
        elif isinstance(m, nn.Linear) and type(m).__name__ == "Linear":
            replace_module(model, name, recast(m, nn.Linear))
        elif type(m).__name__ == "SqueezeExcite" and all(hasattr(m, a) for a in ("conv_reduce", "act1", "gate")):
            new = replace_module(model, name, recast(m, ExactSqueezeExcite))
            new.pool = nn.AdaptiveAvgPool2d(1)
        else:
            continue
        found += 1
    return found

"""Which of a float network's operations the QDQ writer (export/onnx_writer.py) can lower, asked before any work:
the Python API's `quantize` refuses a network with anything else, naming the op, instead of failing at export."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QdgError
from ..quant.tracing import trace
from . import lower_mobile

MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
    nn.GroupNorm,
)
FUNCTIONS = {
    operator.add: "add",
    torch.add: "torch.add",
    F.relu: "relu",
    torch.relu: "torch.relu",
    torch.flatten: "torch.flatten",
}
METHODS: tuple[str, ...] = ("flatten", "relu", "relu_")
# transformers (timm ViT / DeiT / ConvNeXt: export/lower_transformer.py)
MODULES += (nn.LayerNorm, nn.GELU, nn.Softmax)
FUNCTIONS.update(
    {
        getattr: "getattr",
        operator.getitem: "getitem",
        operator.eq: "eq",
        torch._assert: "_assert",
        torch.cat: "cat",
        operator.mul: "mul",
        torch.mul: "torch.mul",
        operator.truediv: "truediv",
        operator.matmul: "matmul",
        torch.matmul: "torch.matmul",
        F.layer_norm: "layer_norm",
        F.gelu: "gelu",
        F.softmax: "softmax",
        F.dropout: "dropout",
        F.scaled_dot_product_attention: "scaled_dot_product_attention",
    }
)
METHODS += (
    "reshape",
    "view",
    "squeeze",
    "unsqueeze",
    "transpose",
    "permute",
    "contiguous",
    "unbind",
    "expand",
    "softmax",
    "mean",
    "mul",
    "div",
    "double",
    "float",
)


def _function_ok(f) -> bool:
    from .lower_transformer import extra_functions

    return f in FUNCTIONS or f in extra_functions()


# blocks known not to lower, named before tracing (their traces fail on an op deep inside)
REFUSED_BLOCKS = {
    "SwinTransformerBlock": "window-shifted attention (timm swin)",
    "SwinTransformerV2Block": "window-shifted attention (timm swin v2)",
}

# the ops of mobile CNNs (export/lower_mobile.py)
MODULES += lower_mobile.MODULES
FUNCTIONS = {**FUNCTIONS, **lower_mobile.FUNCTIONS}
METHODS += lower_mobile.METHODS


def unsupported_op(model: nn.Module) -> str | None:
    """A description of the first operation the writer cannot lower, or None when every one is supported."""
    if any(type(m).__module__.startswith("timm.") for m in model.modules()):
        import copy

        from ..quant.mobile import adapt_timm

        model = copy.deepcopy(model)  # asked as `quantize` will see it: timm's fused modules split (same keys)
        adapt_timm(model)
    mods = dict(model.named_modules())
    for name, m in mods.items():
        if type(m).__name__ in REFUSED_BLOCKS:
            return f"module {name!r} of type {type(m).__name__}: {REFUSED_BLOCKS[type(m).__name__]}"
    for n in trace(model).graph.nodes:
        if n.op == "call_module":
            m = mods[n.target]
            if not isinstance(m, MODULES) and not getattr(m, "fx_leaf", False):
                return f"module {n.target!r} of type {type(m).__name__}"
            if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size not in (1, (1, 1), [1, 1]):
                return f"module {n.target!r}: AdaptiveAvgPool2d to {m.output_size} (only global pooling, to 1)"
        elif n.op == "call_function" and not _function_ok(n.target):
            return f"function {getattr(n.target, '__name__', n.target)!r} (fx node {n.name})"
        elif n.op == "call_method" and n.target not in METHODS:
            return f"tensor method .{n.target}() (fx node {n.name})"
    return None


def check_supported(model: nn.Module) -> None:
    was = model.training
    model.eval()  # the graph that is exported: drop-path and dropout are identities there
    try:
        op = unsupported_op(model)
    finally:
        model.train(was)
    if op is not None:
        raise QdgError(
            f"unsupported operation: {op}; the exporter lowers Conv2d, Linear, BatchNorm2d, GroupNorm, "
            f"ReLU, ReLU6, Hardswish, Hardsigmoid, SiLU, Sigmoid, max and global average pooling, flatten, "
            f"residual adds, multiplies (squeeze-and-excitation), channel concatenation, dropout, and timm "
            f"ViT / DeiT / ConvNeXt blocks (LayerNorm, GELU, softmax attention, token reshapes)"
        )

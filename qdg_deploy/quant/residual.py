"""Quantized residual Adds for torchvision ResNet blocks.

A block swapped here fake-quantizes both inputs of its residual Add with the scheme's activation spec: the main
branch after its last BatchNorm (`add_quant`, pre-ReLU so signed data: a learned zero point where the spec has
one) and the identity. The identity is the downsample output (`id_quant`) or, without a downsample, the block input
itself, which conv1 already quantizes: that quantizer is reused, so the identity is the very tensor conv1 reads and
the export writes one Q/DQ there. A downsample conv reads that same block input too: it uses conv1's input
quantizer (a SharedInput, not a submodule, so the state dict has it once). With the Add's inputs on integer grids an
exporter writes exact Q/DQ for them, and ONNX Runtime / TensorRT fuse every conv and the Add.

The swap builds the Q block from the float one's own children and adds quantizer submodules; the float state-dict
keys stay as they were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .catalog import build_quantizer
from .kernels import residual_add
from .layers import QuantMixin, SharedInput
from .quantizers import QuantSpec
from .swap import recast, replace_module

if TYPE_CHECKING:
    from .plan import AddPlan


class QBlock:
    """What the quantized BasicBlock and Bottleneck share: the identity path and the residual Add."""

    add_plan: AddPlan | None = None  # the Add as ORT's QLinearAdd in eval mode (quant/plan.py), where it fuses

    def identity(self, x):
        if self.downsample is not None:
            return self.id_quant(self.downsample(x))
        if (q := input_quant(self.conv1)) is not None:
            return q(x)  # the tensor conv1 reads (same quantizer, same input: same values)
        return self.id_quant(x)

    def add(self, out, x):
        return self.relu(residual_add(self.add_plan, self.training, self.add_quant(out), self.identity(x)))


class QBasicBlock(QBlock, BasicBlock):
    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.add(self.bn2(self.conv2(out)), x)


class QBottleneck(QBlock, Bottleneck):
    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.add(self.bn3(self.conv3(out)), x)


def input_quant(layer: nn.Module | None):
    """A layer's input quantizer; None for a float layer (calibrate --keep-float leaves some float)."""
    return layer.act_quant if isinstance(layer, QuantMixin) else None


Q_BLOCKS = {BasicBlock: QBasicBlock, Bottleneck: QBottleneck}


def quantize_residual_blocks(model: nn.Module, act: QuantSpec) -> int:
    """Swap every (exact-type) BasicBlock/Bottleneck in place; returns how many were swapped."""
    blocks = [(name, m) for name, m in model.named_modules() if type(m) in Q_BLOCKS]
    for name, old in blocks:
        m = replace_module(model, name, recast(old, Q_BLOCKS[type(old)]))
        m.add_quant = build_quantizer(act, after_relu=False)
        ds = m.downsample[0] if isinstance(m.downsample, nn.Sequential) and len(m.downsample) else None
        q1, qd = input_quant(m.conv1), input_quant(ds)
        if q1 is not None and qd is not None and q1.learned_zp == qd.learned_zp and type(q1) is type(qd):
            # conv1 and the downsample conv read the same tensor: one quantizer for both, so that tensor has a
            # single Q, which the previous block's Add (→ ReLU) needs to fuse into an integer Add. Shared, not
            # owned: the state dict then holds the quantizer once (conv1's), as safetensors requires.
            ds.act_quant = None
            ds.shared_input = SharedInput(q1)
        if m.downsample is not None or q1 is None:
            m.id_quant = build_quantizer(act, after_relu=False)
    return len(blocks)


def residual_quantizers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> quantizer for every residual-Add quantizer (add_quant, id_quant) in the model."""
    return {n: m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in ("add_quant", "id_quant")}

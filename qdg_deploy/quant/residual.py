"""Quantized residual Adds for torchvision ResNet blocks.

A block whose class is swapped here fake-quantizes both inputs of its residual Add with the scheme's
activation spec: the main branch after its last BatchNorm (`add_quant`, pre-ReLU so signed data: a learned
zero point where the spec has one) and the identity. The identity is the downsample output (`id_quant`) or,
without a downsample, the block input itself, which conv1 already quantizes: that quantizer is reused, so the
identity is the very tensor conv1 reads and the export writes one Q/DQ there. A downsample conv reads that
same block input too: it uses conv1's input quantizer (held as a plain attribute, so the state dict has it once). With the Add's inputs on integer
grids an exporter writes exact Q/DQ for them, and ONNX Runtime / TensorRT fuse every conv and the Add.

The swap only changes the class and adds quantizer submodules; the float state-dict keys stay as they were.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .exact import residual_add
from .quantizers import QuantSpec, build_quantizer


def _identity(self, x):
    if self.downsample is not None:
        return self.id_quant(self.downsample(x))
    shared = getattr(self.conv1, "act_quant", None)
    if shared is not None:
        return shared(x)  # the tensor conv1 reads (same quantizer, same input: same values)
    return self.id_quant(x)


class QBasicBlock(BasicBlock):
    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.add_quant(self.bn2(self.conv2(out)))
        return self.relu(residual_add(self, out, _identity(self, x)))


class QBottleneck(Bottleneck):
    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.add_quant(self.bn3(self.conv3(out)))
        return self.relu(residual_add(self, out, _identity(self, x)))


_SWAP = {BasicBlock: QBasicBlock, Bottleneck: QBottleneck}


def quantize_residual_blocks(model: nn.Module, act: QuantSpec) -> int:
    """Swap every (exact-type) BasicBlock/Bottleneck in place; returns how many were swapped."""
    n = 0
    for m in model.modules():
        cls = _SWAP.get(type(m))
        if cls is None:
            continue
        m.__class__ = cls
        m.add_quant = build_quantizer(act, after_relu=False)
        ds = m.downsample[0] if isinstance(m.downsample, nn.Sequential) and len(m.downsample) else None
        q1, qd = getattr(m.conv1, "act_quant", None), getattr(ds, "act_quant", None)
        if q1 is not None and qd is not None and q1.learned_zp == qd.learned_zp and type(q1) is type(qd):
            # conv1 and the downsample conv read the same tensor: one quantizer for both, so that tensor has a
            # single Q, which the previous block's Add (→ ReLU) needs to fuse into an integer Add. A plain
            # attribute, not a registered submodule: the state dict then holds the quantizer once (conv1's), as
            # safetensors requires (no two keys sharing memory).
            del ds._modules["act_quant"]
            object.__setattr__(ds, "act_quant", q1)
        if m.downsample is not None or getattr(m.conv1, "act_quant", None) is None:
            m.id_quant = build_quantizer(act, after_relu=False)
        n += 1
    return n


def residual_quantizers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> quantizer for every residual-Add quantizer (add_quant, id_quant) in the model."""
    return {n: m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in ("add_quant", "id_quant")}

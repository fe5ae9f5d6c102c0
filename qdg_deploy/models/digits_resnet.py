"""A small BatchNorm ResNet for 28×28 digits, built to deploy: every norm is a BatchNorm right after a conv (it folds
into that conv), every block is torchvision's own `BasicBlock` (so the residual Adds get quantizers and run as
integer kernels), and the global average pool reads the last block's output directly, as in torchvision's ResNet.

    conv1: conv3x3(in→32, stride 2) BN ReLU                    28×28 → 14×14
    layer1: BasicBlock(32→64, 1×1 conv + BN skip)              14×14
    layer2: BasicBlock(64→128, stride 2, 1×1 conv + BN skip)   7×7
    layer3: BasicBlock(128→128)                                 7×7
    global average pool, flatten, Linear(128→classes)

The stem is strided: a convolution with one input channel is the slowest per output of all on ONNX Runtime's int8
kernels (K = 9), so it computes 14×14 outputs, not 28×28. Widths are multiples of 16 (ORT's int8 conv kernels pack
channels in groups of 16). Module names follow torchvision's ResNet (conv1, bn1, layer1..3, avgpool, fc). Chosen
against other layouts in the README ("digits-resnet").
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

STEM, STEM_STRIDE = 32, 2
BLOCKS = ((64, 1), (128, 2), (128, 1))  # (width, stride) of layer1, layer2, layer3


def _block(cin: int, cout: int, stride: int) -> BasicBlock:
    downsample = None
    if stride != 1 or cin != cout:  # torchvision's projection shortcut: 1×1 conv (no bias) then BatchNorm
        downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    return BasicBlock(cin, cout, stride, downsample)


class DigitsResNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM, 3, STEM_STRIDE, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM)
        self.relu = nn.ReLU(inplace=True)
        cin = STEM
        for i, (width, stride) in enumerate(BLOCKS, 1):
            self.add_module(f"layer{i}", _block(cin, width, stride))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # torchvision's ResNet initialization
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features the classifier reads (domain adaptation and CORAL split the network here)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

"""Norm and pooling layers whose eval forward computes what the exported graph computes, op for op."""

from __future__ import annotations

import torch
from torch import nn


class ExportMatchedGroupNorm(nn.GroupNorm):
    """GroupNorm whose eval forward computes what the exported graph computes, op for op: per-group mean, variance
    and rstd = 1 / sqrt(var + eps) in float64, cast to float32, then x * (rstd·gamma) + (beta - mean·rstd·gamma).

    torch's own kernel sums in float32 in its own order; its result differs from any ONNX graph's in the last bits,
    which can move a value across a rounding tie at the next quantizer. In float64 the moments come out the same
    in both runtimes (to float32), so only the convolutions' summation order is left to differ. Training uses
    torch's kernel (same values up to float round-off, and faster)."""

    def forward(self, x):
        if self.training:
            return super().forward(x)
        n, c, g = x.shape[0], self.num_channels, self.num_groups
        xr = x.reshape(n, g, c // g, -1)
        xd = xr.double()
        mean = xd.mean(dim=(2, 3), keepdim=True)
        d = xd - mean
        var = (d * d).mean(dim=(2, 3), keepdim=True)
        rstd = (torch.ones((), dtype=var.dtype, device=x.device) / torch.sqrt(var + self.eps)).float()
        mean = mean.float()
        gamma = self.weight if self.affine else torch.ones(c, device=x.device)
        beta = self.bias if self.affine else torch.zeros(c, device=x.device)
        scale = rstd * gamma.reshape(g, c // g, 1)
        shift = beta.reshape(g, c // g, 1) - mean * scale
        return (xr * scale + shift).reshape(x.shape)


class ExportMatchedAvgPool(nn.AdaptiveAvgPool2d):
    """Global average pooling whose eval forward computes what the exported graph computes: the mean in float64,
    then one cast to float32. A float32 sum depends on its order (torch's and ONNX Runtime's differ in the last
    bits, which moves values across the next quantizer's ties); a float64 sum of float32 values does not, to
    float32 precision."""

    def forward(self, x):
        if self.training or self.output_size not in (1, (1, 1), [1, 1]):
            return super().forward(x)
        return x.double().mean(dim=(2, 3), keepdim=True).to(x.dtype)


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that the snapped conv before it folds (quant/kernels.py): an identity in eval mode, BatchNorm
    in training. The plan (quant/plan.py) puts one only after a layer it snaps."""

    def forward(self, x):
        if not self.training:
            return x
        return super().forward(x)


EVAL_MATCHED = {nn.GroupNorm: ExportMatchedGroupNorm, nn.AdaptiveAvgPool2d: ExportMatchedAvgPool}

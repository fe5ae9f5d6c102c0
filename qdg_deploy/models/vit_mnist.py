"""A small ViT for the embedded 28×28 digits (issue 30's accuracy benchmark): timm's VisionTransformer with 7×7
patches (16 tokens + the class token), width 64, depth 4, 4 heads, MLP ratio 2 — about 0.14 M parameters."""

from __future__ import annotations

from torch import nn


def vit_mnist(in_channels: int, num_classes: int, image_size: int = 28) -> nn.Module:
    import timm  # optional dependency: only this model needs it

    return timm.create_model(
        "vit_tiny_patch16_224",
        img_size=image_size,
        patch_size=image_size // 4,
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        num_classes=num_classes,
        in_chans=in_channels,
    )

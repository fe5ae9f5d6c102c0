"""The Python API for a user's own network: `quantize`, `calibrate`, `export_onnx` (imported as `qdg_deploy.*`).

    import qdg_deploy
    qnet = qdg_deploy.quantize(net, "ort")                      # LSQ quantizers in place (the scheme's layers)
    qdg_deploy.calibrate(qnet, loader, "percentile")            # PTQ ranges from data (or train it: QAT)
    qdg_deploy.export_onnx(qnet, (3, 224, 224), "model.onnx")   # exact QDQ ONNX

Any torch.fx-traceable CNN built from Conv2d / Linear / BatchNorm2d / GroupNorm / ReLU / pooling / flatten and
residual adds is accepted; anything else is refused by `quantize` with one error naming the operation.
"""

from __future__ import annotations

from itertools import islice
from typing import Iterable

import torch
from torch import nn

from .calibration.core import calibrate_model
from .export.api import export_onnx
from .export.supported import check_supported
from .quant import Scheme, get_scheme, quantize_model
from .quant.mobile import adapt_timm


def quantize(model: nn.Module, scheme: str | Scheme = "ort", *, bits: int | None = None,
             act_bits: int | None = None) -> nn.Module:
    """Swap the scheme's layers of `model` for quantized ones, in place; returns the model (eval mode)."""
    adapt_timm(model)  # timm's BatchNormAct2d / Linear / SqueezeExcite as the exporter lowers them (same keys)
    check_supported(model)
    s = scheme if isinstance(scheme, Scheme) else get_scheme(scheme, bits=bits, act_bits=act_bits)
    return quantize_model(model, s).eval()


def calibrate(model: nn.Module, loader: Iterable, method: str = "percentile", *, num_batches: int | None = None,
              percentile: float = 99.99, weight_method: str = "minmax") -> dict:
    """Set a quantized model's ranges from `loader` (batches of images, or (images, labels) pairs; the first
    `num_batches`, default all) with an observer: minmax, percentile, entropy or mse."""
    batches = [torch.as_tensor(b[0] if isinstance(b, (tuple, list)) else b) for b in islice(loader, num_batches)]
    return calibrate_model(model, batches, method, percentile=percentile, weight_method=weight_method)


__all__ = ["calibrate", "export_onnx", "quantize"]

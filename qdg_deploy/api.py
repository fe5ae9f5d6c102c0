"""The Python API for a user's own network: `quantize`, `calibrate`, `export_onnx` (imported as `qdg_deploy.*`).

    import qdg_deploy
    qnet = qdg_deploy.quantize(net, "ort")                      # LSQ quantizers in place (the scheme's layers)
    qdg_deploy.calibrate(qnet, loader, "percentile")            # PTQ ranges from data (or train it: QAT)
    qdg_deploy.export_onnx(qnet, (3, 224, 224), "model.onnx")   # exact QDQ ONNX

Any torch.fx-traceable CNN built from Conv2d / Linear / BatchNorm2d / GroupNorm / ReLU / pooling / flatten and
residual adds is accepted; anything else is refused by `quantize` with one error naming the operation.
"""

from __future__ import annotations

from torch import nn

from .calibrate import calibrate_loader
from .export.api import export_onnx
from .export.supported import check_supported
from .quant import Scheme, get_scheme, quantize_model
from .quant.mobile import adapt_timm


def quantize(
    model: nn.Module, scheme: str | Scheme = "ort", *, bits: int | None = None, act_bits: int | None = None
) -> nn.Module:
    """Swap the scheme's layers of `model` for quantized ones, in place; returns the model (eval mode)."""
    adapt_timm(model)  # timm's BatchNormAct2d / Linear / SqueezeExcite as the exporter lowers them (same keys)
    check_supported(model)
    s = scheme if isinstance(scheme, Scheme) else get_scheme(scheme, bits=bits, act_bits=act_bits)
    return quantize_model(model, s).eval()


calibrate = calibrate_loader  # the function qdg_deploy.calibrate(...) calls, also once calibrate/ is imported


__all__ = ["calibrate", "export_onnx", "quantize"]

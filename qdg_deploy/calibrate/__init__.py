"""Post-training quantization (`qdg-deploy calibrate`): observers, calibration of a quantized network, per-layer
sensitivity.

`qdg_deploy.calibrate(model, loader, method)` is also the public Python API's function, and Python binds this package
to that very name once any of its modules is imported. So the package itself is callable: calling it is
`calibrate_loader` below (what qdg_deploy.api.calibrate is), whichever the name points at."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable
from itertools import islice

from .core import calibrate_model, float_pass
from .observers import ACT_METHODS, WEIGHT_METHODS


def calibrate_loader(
    model,
    loader: Iterable,
    method: str = "percentile",
    *,
    num_batches: int | None = None,
    percentile: float = 99.99,
    weight_method: str = "minmax",
) -> dict:
    """Set a quantized model's ranges from `loader` (batches of images, or (images, labels) pairs; the first
    `num_batches`, default all) with an observer: minmax, percentile, entropy or mse."""
    import torch

    batches = [torch.as_tensor(b[0] if isinstance(b, (tuple, list)) else b) for b in islice(loader, num_batches)]
    return calibrate_model(model, batches, method, percentile=percentile, weight_method=weight_method)


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs) -> dict:
        return calibrate_loader(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

__all__ = ["ACT_METHODS", "WEIGHT_METHODS", "calibrate_loader", "calibrate_model", "float_pass"]

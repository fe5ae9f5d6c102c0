"""Post-training quantization (`qdg-deploy calibrate`): observers, calibration of a quantized network, per-layer sensitivity."""

from .core import calibrate_model, float_pass
from .observers import ACT_METHODS, WEIGHT_METHODS

__all__ = ["ACT_METHODS", "WEIGHT_METHODS", "calibrate_model", "float_pass"]

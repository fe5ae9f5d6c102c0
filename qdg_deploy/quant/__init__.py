from .catalog import QUANTIZERS, build_quantizer, register_quantizer
from .convert import is_quantized, model_size, quant_layers, quantize_model, strip_quantizers
from .layers import QConv2d, QLinear
from .quantizers import LsqQuantizer, Quantizer, QuantSpec
from .schemes import SCHEMES, Scheme, get_scheme
from .tracing import relu_fed_layers

__all__ = [
    "QConv2d",
    "QLinear",
    "QuantSpec",
    "Quantizer",
    "LsqQuantizer",
    "QUANTIZERS",
    "SCHEMES",
    "Scheme",
    "build_quantizer",
    "get_scheme",
    "is_quantized",
    "model_size",
    "quant_layers",
    "quantize_model",
    "register_quantizer",
    "relu_fed_layers",
    "strip_quantizers",
]

from .convert import is_quantized, model_size, quant_layers, quantize_model, relu_fed_layers
from .layers import QConv2d, QLinear
from .quantizers import QUANTIZERS, LsqQuantizer, Quantizer, QuantSpec, build_quantizer, register_quantizer
from .schemes import SCHEMES, Scheme, get_scheme
from . import baselines, daq  # noqa: F401  (register dorefa/uniform/apot/bwn, daq and the "alignq" scheme)

__all__ = ["QConv2d", "QLinear", "QuantSpec", "Quantizer", "LsqQuantizer", "QUANTIZERS", "SCHEMES", "Scheme",
           "build_quantizer", "get_scheme", "is_quantized", "model_size", "quant_layers", "quantize_model",
           "register_quantizer", "relu_fed_layers"]

"""Named quantization schemes: small declarative records that `--bits` / `--act-bits` override."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import QdgError
from .quantizers import QuantSpec


@dataclass(frozen=True)
class Scheme:
    name: str
    layers: tuple[str, ...]  # which layer types are quantized: "conv", "linear"
    weight: QuantSpec
    act: QuantSpec | None  # None: activations stay float
    quantize_first: bool = True
    quantize_last: bool = True
    note: str = ""
    act_first: bool = True  # False: the first quantized layer's input (the image) stays float (AlignQ)
    # True: ResNet blocks also quantize both residual-Add inputs (main branch and identity) with the act spec,
    # so an exporter can write exact Q/DQ there and ORT/TensorRT run the Add and every conv as integer kernels.
    # Old config.json files lack the key: False, which matches their state dicts.
    residual: bool = False
    # True: biases (BatchNorm folded) sit on the int32 grid s_x·s_w in eval mode, as ONNX Runtime's integer
    # kernels hold them (quant/bias.py). Old config.json files lack the key: False, as they were trained.
    int_bias: bool = False
    # True (with residual): the global average pool after the last ResNet block reads its input through an
    # activation quantizer too, so that block's Add has a quantizer after it and runs as an integer Add like the
    # others (quant/pool.py). Old config.json files lack the key: False, which matches their state dicts.
    pool: bool = False
    # Layers (module names) left float whatever `layers` says: a mixed-precision model (calibrate --keep-float).
    # Old config.json files lack the key: none.
    float_layers: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Scheme":
        d = dict(d)
        d["layers"] = tuple(d["layers"])
        d["float_layers"] = tuple(d.get("float_layers", ()))
        d["weight"] = QuantSpec(**d["weight"])
        d["act"] = QuantSpec(**d["act"]) if d.get("act") else None
        return cls(**d)


_W8_NARROW = QuantSpec(bits=8, signed=True, narrow=True, per_channel=True)

SCHEMES: dict[str, Scheme] = {
    # QT-DoG as its public code runs it: LSQ on every Conv2d's weights, 7-bit full signed range
    # [-64, 63], one step per output channel, no zero point; activations and the classifier float.
    "paper": Scheme(
        "paper",
        ("conv",),
        QuantSpec(bits=7, signed=True, narrow=False, per_channel=True),
        None,
        note="weight-only: buys size, not speed",
    ),
    # TensorRT explicit quantization: symmetric narrow-range per-channel weights, int8 zp-0 activations.
    "trt": Scheme("trt", ("conv", "linear"), _W8_NARROW, QuantSpec(bits=8, signed=True), residual=True, pool=True),
    # ONNX Runtime CPU (U8S8 kernels): uint8 activations, zp 0 after a ReLU so ORT can fold the ReLU.
    "ort": Scheme(
        "ort",
        ("conv", "linear"),
        _W8_NARROW,
        QuantSpec(bits=8, signed=False, zero_point="relu"),
        residual=True,
        int_bias=True,
        pool=True,
    ),
    # AlignQ's placement: DAQ on conv weights and conv inputs (not the image), classifier float, same bits for both.
    "alignq": Scheme(
        "alignq",
        ("conv",),
        QuantSpec(bits=4, signed=True, quantizer="daq"),
        QuantSpec(bits=4, signed=True, quantizer="daq"),
        act_first=False,
        note="AlignQ DAQ W4A4 on convs; first conv weight-only, classifier float",
    ),
}


def get_scheme(name: str, bits: int | None = None, act_bits: int | None = None, quantizer: str | None = None) -> Scheme:
    """A named scheme with optional overrides; act_bits=0 means float activations."""
    try:
        scheme = SCHEMES[name]
    except KeyError:
        raise QdgError(f"unknown scheme {name!r}; available: {', '.join(SCHEMES)}") from None
    # The quantizer goes in together with the bits: a spec validates its bits against its quantizer
    # (1 bit exists only for "bwn").
    wq = quantizer if quantizer is not None else scheme.weight.quantizer
    scheme = replace(
        scheme, weight=replace(scheme.weight, quantizer=wq, bits=bits if bits is not None else scheme.weight.bits)
    )
    if act_bits == 0:
        scheme = replace(scheme, act=None)
    elif act_bits is not None or (quantizer is not None and scheme.act):
        base = scheme.act or QuantSpec(bits=8, signed=True)
        aq = quantizer if quantizer is not None else base.quantizer
        scheme = replace(scheme, act=replace(base, quantizer=aq, bits=act_bits if act_bits is not None else base.bits))
    return scheme

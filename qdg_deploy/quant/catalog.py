"""Every quantizer by the name a QuantSpec gives (`--quantizer`), listed here rather than registered on import."""

from __future__ import annotations

from ..errors import QdgError
from .baselines import ApotQuantizer, BwnQuantizer, DorefaQuantizer, UniformQuantizer
from .daq import DaqQuantizer
from .quantizers import LsqQuantizer, Quantizer, QuantSpec

QUANTIZERS: dict[str, type[Quantizer]] = {
    "lsq": LsqQuantizer,
    "dorefa": DorefaQuantizer,
    "uniform": UniformQuantizer,
    "apot": ApotQuantizer,
    "bwn": BwnQuantizer,
    "daq": DaqQuantizer,
}


def register_quantizer(name: str, cls: type[Quantizer]) -> type[Quantizer]:
    """Add a quantizer class under `name` (for code outside this package)."""
    QUANTIZERS[name] = cls
    return cls


def build_quantizer(spec: QuantSpec, **kwargs) -> Quantizer:
    try:
        cls = QUANTIZERS[spec.quantizer]
    except KeyError:
        raise QdgError(f"unknown quantizer {spec.quantizer!r}; available: {', '.join(sorted(QUANTIZERS))}") from None
    return cls(spec, **kwargs)

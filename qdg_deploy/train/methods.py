"""Every training method by its `--method` name, listed here rather than registered on import."""

from __future__ import annotations

from ..errors import QdgError
from .algorithms import ERM, Algorithm, QTDoG
from .alignq import AlignQ
from .da import DANN, DSAN
from .dg import CORAL, MixStyle

ALGORITHMS: dict[str, type[Algorithm]] = {c.name: c for c in (ERM, QTDoG, CORAL, MixStyle, DANN, DSAN, AlignQ)}


def register(name: str, cls: type[Algorithm]) -> type[Algorithm]:
    """Add a method (for code outside this package)."""
    cls.name = name
    ALGORITHMS[name] = cls
    return cls


def get_algorithm(name: str) -> type[Algorithm]:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise QdgError(f"unknown method {name!r}; available: {', '.join(ALGORITHMS)}") from None

"""Up-front checks of `train`'s options: every numeric range, and options the chosen method would ignore.

Run before any data is read or any file written, so a bad value costs nothing and leaves nothing behind. The ranges,
choices and methods are the hyperparameter table's (train/hparams.py), read at each call."""

from __future__ import annotations

import math

from ..errors import QdgError
from . import hparams

# Methods that quantize whatever --quant says.
ALWAYS_QUANTIZED = ("qtdog", "alignq")


def check_ranges(hp: dict) -> None:
    """QdgError naming the first option whose value is out of its range (NaN and infinities included)."""
    for h in hparams.HPARAMS:
        v = hp.get(h.name)
        if v is None or (h.low is None and h.high is None):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise QdgError(f"{h.option} takes a finite number (got {v!r})")
        below = h.low is not None and (v < h.low or (v == h.low and h.strict))
        if below or (h.high is not None and v > h.high):
            rng = f"in [{h.low}, {h.high}]" if h.high is not None else f"{'>' if h.strict else '>='} {h.low}"
            raise QdgError(f"{h.option} must be {rng} (got {v!r})")


def check_choices(hp: dict, given: dict) -> None:
    """QdgError naming the first option whose value is not one it takes; --momentum without SGD; --q-init on a
    quantizer without LSQ steps."""
    for h in hparams.HPARAMS:
        if h.choices and hp.get(h.name) is not None and hp[h.name] not in h.choices:
            raise QdgError(f"{h.option} takes one of {', '.join(h.choices)} (got {hp[h.name]!r})")
    if given.get("momentum") is not None and hp.get("optimizer") != "sgd":
        raise QdgError(f"--momentum applies to --optimizer sgd only, not {hp.get('optimizer')}: leave it out")
    if hp.get("q_init", "lsq") != "lsq" and hp.get("quantizer") != "lsq":
        raise QdgError(f"--q-init {hp['q_init']} calibrates LSQ step sizes; --quantizer {hp['quantizer']} has none")


def applies(method: str, key: str, quant: bool) -> bool:
    """Whether option `key` means anything to `method` (quantizing when `quant`, or always for qtdog / alignq)."""
    h = hparams.entry(key)
    if h is None:
        return True
    if h.quant and not (quant or method in ALWAYS_QUANTIZED):
        return False
    return not h.methods or method in h.methods


def check_applicable(method: str, given: dict) -> None:
    """QdgError for an option the method would silently ignore: quantization options on a float run, another
    method's options."""
    quantizes = method in ALWAYS_QUANTIZED or bool(given.get("quant"))
    if method == "qtdog" and given.get("quant") is False:
        raise QdgError(
            "--no-quant contradicts --method qtdog (QT-DoG is erm --quant): use --method erm for a float run"
        )
    if not quantizes:
        used = [
            h.option
            for h in hparams.HPARAMS
            if h.quant and given.get(h.name) is not None and not applies(method, h.name, False)
        ]
        if used:
            many = len(used) > 1
            raise QdgError(
                f"{', '.join(used)} only appl{'y' if many else 'ies'} to quantized training, and --method "
                f"{method} trains a float network: add --quant (or use --method qtdog), or leave "
                f"{'them' if many else 'it'} out"
            )
    for h in hparams.HPARAMS:
        if h.methods and given.get(h.name) is not None and not applies(method, h.name, quantizes):
            raise QdgError(f"{h.option} applies to --method {' or '.join(h.methods)} only, not {method}: leave it out")

"""Up-front checks of `train`'s options: every numeric range, and options the chosen method would ignore.

Run before any data is read or any file written, so a bad value costs nothing and leaves nothing behind."""

from __future__ import annotations

import math

from ..errors import QdgError

# option: (lowest, highest, lowest allowed itself); None: no bound. Integers and floats alike must be finite.
RANGES = {
    "lr": (0, None, False), "q_lr": (0, None, False), "weight_decay": (0, None, True),
    "batch_size": (1, None, True), "steps": (1, None, True), "q_steps": (0, None, True),
    "checkpoint_freq": (1, None, True), "threads": (1, None, True), "image_size": (8, None, True),
    "swad_n_converge": (1, None, True), "swad_n_tolerance": (0, None, True), "swad_tolerance_ratio": (0, None, True),
    "swad_bn_steps": (0, None, True), "sma": (0, None, True), "coral_weight": (0, None, True),
    "mixstyle_p": (0, 1, True), "mixstyle_alpha": (0, None, False), "act_range": (0, None, False),
    "lam": (0, None, True), "lam2": (0, None, True), "bits": (1, 8, True), "act_bits": (0, 8, True),
    "momentum": (0, 1, True), "workers": (0, None, True),
}

# option: the values it takes (`grad_approx` also takes True / False from Python: "chain" / "off").
CHOICES = {"optimizer": ("sgd", "adam"), "lr_schedule": ("none", "step"), "grad_approx": ("chain", "legacy", "off"),
           "q_init": ("lsq", "minmax", "percentile", "mse")}

# Options that only a quantizing run reads, and options only some methods read.
QUANT_OPTIONS = ("scheme", "bits", "act_bits", "quantizer", "q_steps", "q_lr", "freeze_after_swap", "q_init")
METHOD_OPTIONS = {"coral_weight": ("coral",), "mixstyle_p": ("mixstyle",), "mixstyle_alpha": ("mixstyle",),
                  "crp": ("alignq",), "grad_approx": ("alignq",), "act_range": ("alignq",), "lam": ("alignq",),
                  "lam2": ("alignq",), "da": ("alignq",), "q_init": ("erm", "qtdog", "coral", "mixstyle"),
                  "sync_bn": ("erm", "qtdog", "mixstyle")}  # the methods torchrun trains data parallel
ALWAYS_QUANTIZED = ("qtdog", "alignq")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_ranges(hp: dict) -> None:
    """QdgError naming the first option whose value is out of its range (NaN and infinities included)."""
    for name, (low, high, inclusive) in RANGES.items():
        v = hp.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise QdgError(f"{flag(name)} takes a finite number (got {v!r})")
        below = v < low or (v == low and not inclusive)
        if below or (high is not None and v > high):
            rng = (f"in [{low}, {high}]" if high is not None
                   else f"{'>=' if inclusive else '>'} {low}")
            raise QdgError(f"{flag(name)} must be {rng} (got {v!r})")


def check_choices(hp: dict, given: dict) -> None:
    """QdgError naming the first option whose value is not one it takes; --momentum without SGD; --q-init on a
    quantizer without LSQ steps."""
    for name, values in CHOICES.items():
        if hp.get(name) is not None and hp[name] not in values:
            raise QdgError(f"{flag(name)} takes one of {', '.join(values)} (got {hp[name]!r})")
    if given.get("momentum") is not None and hp.get("optimizer") != "sgd":
        raise QdgError(f"--momentum applies to --optimizer sgd only, not {hp.get('optimizer')}: leave it out")
    if hp.get("q_init", "lsq") != "lsq" and hp.get("quantizer") != "lsq":
        raise QdgError(f"--q-init {hp['q_init']} calibrates LSQ step sizes; --quantizer {hp['quantizer']} has none")


def applies(method: str, key: str, quant: bool) -> bool:
    """Whether option `key` means anything to `method` (quantizing when `quant`, or always for qtdog / alignq)."""
    if key in QUANT_OPTIONS and not (quant or method in ALWAYS_QUANTIZED):
        return False
    return key not in METHOD_OPTIONS or method in METHOD_OPTIONS[key]


def check_applicable(method: str, given: dict) -> None:
    """QdgError for an option the method would silently ignore: quantization options on a float run, another
    method's options."""
    quantizes = method in ALWAYS_QUANTIZED or bool(given.get("quant"))
    if method == "qtdog" and given.get("quant") is False:
        raise QdgError("--no-quant contradicts --method qtdog (QT-DoG is erm --quant): use --method erm for a "
                       "float run")
    if not quantizes:
        used = [flag(k) for k in QUANT_OPTIONS if given.get(k) is not None and not applies(method, k, False)]
        if used:
            many = len(used) > 1
            raise QdgError(f"{', '.join(used)} only appl{'y' if many else 'ies'} to quantized training, and --method "
                           f"{method} trains a float network: add --quant (or use --method qtdog), or leave "
                           f"{'them' if many else 'it'} out")
    for k, methods in METHOD_OPTIONS.items():
        if given.get(k) is not None and not applies(method, k, quantizes):
            raise QdgError(f"{flag(k)} applies to --method {' or '.join(methods)} only, not {method}: leave it out")


"""Training. Names load on first use, so that reading the hyperparameter table (cli.py builds `train`'s options from
train/hparams.py) does not import torch."""

from importlib import import_module

_FROM = {
    "Algorithm": ".algorithms",
    "ALGORITHMS": ".methods",
    "get_algorithm": ".methods",
    "register": ".methods",
    "default_hparams": ".hparams",
    "resolve_hparams": ".loop",
    "train": ".loop",
    "train_one": ".loop",
}

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "default_hparams",
    "get_algorithm",
    "register",
    "resolve_hparams",
    "train",
    "train_one",
]


def __getattr__(name: str):
    if name in _FROM:
        return getattr(import_module(_FROM[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

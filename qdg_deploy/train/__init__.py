from .algorithms import ALGORITHMS, Algorithm, get_algorithm, register
from . import alignq, da, dg  # noqa: F401  (register dann, dsan, alignq, coral, mixstyle)
from .hparams import default_hparams
from .loop import resolve_hparams, train, train_one

__all__ = ["ALGORITHMS", "Algorithm", "default_hparams", "get_algorithm", "register", "resolve_hparams", "train",
           "train_one"]

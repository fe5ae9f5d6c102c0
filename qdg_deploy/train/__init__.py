from .algorithms import Algorithm
from .methods import ALGORITHMS, get_algorithm, register
from .hparams import default_hparams
from .loop import resolve_hparams, train, train_one

__all__ = ["ALGORITHMS", "Algorithm", "default_hparams", "get_algorithm", "register", "resolve_hparams", "train",
           "train_one"]

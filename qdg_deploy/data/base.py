"""The data-set interface shared by every loader, and DomainBed-style in/out splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from qdg_deploy.errors import DataError


class DGDataset:
    """A domain-generalization data set: several domains sharing one label space.

    Subclasses implement `_domain_dataset`; `_subset` may be overridden when a
    cheaper view than `torch.utils.data.Subset` exists.
    """

    # False when train and eval transforms are identical (no augmentation), which
    # lets `split_domains` hand out one object for both `train` and `in_eval`.
    augments: bool = True
    # The eval input pipeline (size, resize, crop, interpolation, mean/std, channel order): config.json's "input"
    # and the ONNX metadata, so that a deployment feeds the exported model what it was trained on.
    pipeline: dict | None = None

    def __init__(self, name: str, domains: list[str], classes: list[str], input_shape: tuple[int, int, int]):
        self.name = name
        self.domains = list(domains)
        self.classes = list(classes)
        self.input_shape = tuple(input_shape)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def domain_index(self, name_or_index: str | int) -> int:
        """Resolve a domain name or index to an index.

        Names win over indices: rotated-mnist's domains are named "0", "15", ...,
        so "15" is the domain named 15, while "5" (not a name) is index 5.
        """
        n, index = len(self.domains), name_or_index
        if isinstance(index, str):
            if index in self.domains:
                return self.domains.index(index)
            if index.isascii() and index.isdigit():
                index = int(index)
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool) and 0 <= index < n:
            return int(index)
        raise DataError(
            f"unknown domain {name_or_index!r} for {self.name}: use one of "
            f"{', '.join(self.domains)} or an index 0-{n - 1}"
        )

    def domain_dataset(self, i: int, train: bool) -> Dataset:
        """The whole of domain `i`, with the training (augmenting) or the eval transform."""
        return self._domain_dataset(self.domain_index(i), train)

    def domain_size(self, i: int) -> int:
        return len(self.domain_dataset(i, train=False))

    def _domain_dataset(self, i: int, train: bool) -> Dataset:
        raise NotImplementedError

    def _subset(self, i: int, indices: list[int], train: bool) -> Dataset:
        return Subset(self.domain_dataset(i, train), indices)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, domains={self.domains}, "
            f"num_classes={self.num_classes}, input_shape={self.input_shape})"
        )


class LabelledTensorDataset(TensorDataset):
    """A TensorDataset of (images, labels) whose items are `(x, int(y))`.

    Still a TensorDataset, so a training loop may index `.tensors` directly.
    """

    def __getitem__(self, index):
        x, y = self.tensors
        return x[index], int(y[index])


class TensorDGDataset(DGDataset):
    """Domains held fully in memory as (images, labels) tensors; no augmentation."""

    augments = False

    def __init__(
        self, name: str, domains: list[str], classes: list[str], tensors: list[tuple[torch.Tensor, torch.Tensor]]
    ):
        super().__init__(name, domains, classes, tuple(tensors[0][0].shape[1:]))
        self.tensors = tensors

    def _domain_dataset(self, i: int, train: bool) -> Dataset:
        return LabelledTensorDataset(*self.tensors[i])

    def _subset(self, i: int, indices: list[int], train: bool) -> Dataset:
        x, y = self.tensors[i]
        idx = torch.as_tensor(indices, dtype=torch.long)
        return LabelledTensorDataset(x[idx], y[idx])


@dataclass
class DomainSplit:
    name: str  # domain name
    train: Dataset  # the 'in' part, training (augmenting) transform
    in_eval: Dataset  # the same 'in' indices, eval transform
    out_eval: Dataset  # the held-out part, eval transform


def _split_indices(n: int, holdout_fraction: float, seed: int, domain: int):
    # SeedSequence mixes (seed, domain) deterministically in every process, unlike
    # Python's hash() of strings, which is salted per process.
    rng = np.random.default_rng([seed, domain])
    perm = rng.permutation(n).tolist()
    n_out = int(n * holdout_fraction)
    return perm[n_out:], perm[:n_out]


def split_domains(ds: DGDataset, holdout_fraction: float = 0.2, seed: int = 0) -> list[DomainSplit]:
    """DomainBed's split: per domain, shuffle, first `holdout_fraction` -> out, rest -> in."""
    if not 0.0 <= holdout_fraction < 1.0:
        raise DataError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if seed < 0:
        raise DataError(f"split seed must be >= 0, got {seed}")
    splits = []
    for i, name in enumerate(ds.domains):
        in_idx, out_idx = _split_indices(ds.domain_size(i), holdout_fraction, seed, i)
        train = ds._subset(i, in_idx, train=True)
        in_eval = ds._subset(i, in_idx, train=False) if ds.augments else train
        splits.append(DomainSplit(name, train, in_eval, ds._subset(i, out_idx, train=False)))
    return splits

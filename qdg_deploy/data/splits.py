"""A run's data in one object: per domain its train / in / out splits, and which domain is held out.

The leave-one-domain-out protocol (DomainBed's training-domain validation): the model trains on the other domains'
`in` splits, is selected on their `out` splits (validation), and is scored on the held-out domain, all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import ConcatDataset, Dataset, Subset

from .base import DGDataset, DomainSplit


@dataclass(frozen=True)
class Splits:
    ds: DGDataset
    domains: list[DomainSplit]  # one per domain, in the data set's order
    test: int  # index of the held-out domain

    @property
    def heldout(self) -> DomainSplit:
        return self.domains[self.test]

    @property
    def training(self) -> list[DomainSplit]:
        """Every domain but the held-out one, in order."""
        return [s for i, s in enumerate(self.domains) if i != self.test]

    @property
    def training_names(self) -> list[str]:
        return [s.name for s in self.training]

    def heldout_data(self) -> Dataset:
        """The held-out domain, all of it (its `in` and `out` parts, eval transform)."""
        return ConcatDataset([self.heldout.in_eval, self.heldout.out_eval])

    def validation(self) -> dict[str, Dataset]:
        """The training domains' `out` splits, by domain name."""
        return {s.name: s.out_eval for s in self.training}

    def scored_sets(self, max_samples: int | None = None) -> dict[str, Dataset]:
        """What an export is verified on: "heldout:NAME" (all of it), then "out:NAME" per training domain;
        `max_samples` keeps the first that many of each."""
        sets = {
            f"heldout:{self.heldout.name}": self.heldout_data(),
            **{f"out:{name}": d for name, d in self.validation().items()},
        }
        if max_samples:
            sets = {k: Subset(v, range(min(len(v), max_samples))) for k, v in sets.items()}
        return sets

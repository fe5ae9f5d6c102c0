"""The network of an EoQ / EoA ensemble run (workflows/ensemble.py builds the run directory)."""

from __future__ import annotations

from torch import nn


class Ensemble(nn.Module):
    """Sum of the members' logits (EoA): member 0 + member 1 + ..., in that order."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        y = self.members[0](x)
        for m in self.members[1:]:
            y = y + m(x)
        return y

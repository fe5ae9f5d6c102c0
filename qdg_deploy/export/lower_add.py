"""Lowering: residual Adds and the quantizers on their inputs."""

from __future__ import annotations

import torch.fx

from ..quant import Quantizer
from .graph_builder import GraphBuilder
from .lower_qdq import act_qdq_shared
from .records import ResidualQdqRecord, ResidualQuantRecord


def residual_quant(g: GraphBuilder, x: str, p: str, q: Quantizer) -> tuple[str, ResidualQuantRecord | None]:
    """A trained residual-Add input quantizer (the block's identity or main branch): exact Q/DQ (none in fp32)."""
    if g.settings.fp32:
        return x, None
    dq, act = act_qdq_shared(g, x, p, q, probe=False)
    return dq, ResidualQuantRecord(p, act)


def add(g: GraphBuilder, n: torch.fx.Node) -> tuple[str, ResidualQdqRecord | None]:
    """a + b; with --residual-qdq, each input the graph has already quantized is read through its DQ."""
    a, b = g.arg(n.args[0]), g.arg(n.args[1])
    rec = None
    if g.settings.residual_qdq:
        qa, qb = g.quantized_inputs.get(a), g.quantized_inputs.get(b)
        if qa or qb:
            rec = ResidualQdqRecord(n.name, [t for t, q in ((a, qa), (b, qb)) if q])
        a, b = qa or a, qb or b
    return g.add("Add", [a, b], g.uid(n.name)), rec

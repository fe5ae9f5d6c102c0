"""The deployment plan: how every quantized layer and residual Add runs in eval mode and is exported.

Built once, at the end of `quantize_model`, from one fx trace of the quantized model, and held by the modules it
describes (each quantized layer's `plan`, each residual block's `add_plan`): the eval forward, the weight folder,
the ONNX writer and the export report all read it there. Per layer:

* mode: weight-only (float input), fake-quant (an input grid QuantizeLinear cannot express: float op), snapped
  (the output snapped to its integer accumulator, quant/kernels.py) or ort-kernel (computed as ONNX Runtime's
  QLinearConv / QGemm into `out_quant`, its output quantizer: quant/ort_fusion.py);
* bn: the BatchNorm folded into it (snapped layers and integer biases fold it; the writer folds the same one);
* int_bias: its bias sits on the int32 grid s_x·s_w in eval mode (quant/bias.py).

Per residual block whose Add ORT runs as QLinearAdd: the Add's two input quantizers and its output quantizer.
Per global pool ORT runs as QLinearGlobalAveragePool (a quantized pool read by one quantizer through a Flatten):
that quantizer.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass
from typing import cast

import torch
import torch.fx
from torch import nn

from ..errors import QdgError
from .layers import QConv2d, QLinear, QuantMixin
from .norms import FoldedBatchNorm2d
from .ort_fusion import flatten_quant, output_quantizer
from .pool import QAvgPool
from .quantizers import Quantizer
from .residual import QBlock
from .swap import recast, replace_module
from .tracing import conv_bn_pairs, trace


class Mode(enum.Enum):
    FLOAT = "float"
    WEIGHT_ONLY = "weight-only"
    FAKE_QUANT = "fake-quant"
    SNAPPED = "snapped"
    ORT_KERNEL = "ort-kernel"


@dataclass(frozen=True)
class LayerPlan:
    mode: Mode
    bn: nn.BatchNorm2d | None = None
    int_bias: bool = False
    out_quant: Quantizer | None = None

    @property
    def exact(self) -> bool:
        """Snapped or computed as ORT's kernel: torch and the runtimes then hold the same float32 values."""
        return self.mode in (Mode.SNAPPED, Mode.ORT_KERNEL)


FLOAT = LayerPlan(Mode.FLOAT)
PLAN_ATTRS = ("plan", "add_plan", "pool_plan")  # where modules hold their part of the plan


@dataclass(frozen=True)
class AddPlan:
    main: Quantizer  # the main branch's quantizer (add_quant)
    identity: Quantizer  # the identity's (id_quant, or conv1's input quantizer)
    out: Quantizer  # the quantizer that alone reads the Add (through a droppable ReLU)


@dataclass(frozen=True)
class PoolPlan:
    out: Quantizer  # the quantizer that alone reads the pooled tensor (through a Flatten): the classifier's input


def layer_plan(m: nn.Module) -> LayerPlan:
    """The plan of any Conv2d / Linear: a quantized layer's own, FLOAT for a float one."""
    return m.plan if isinstance(m, QuantMixin) and m.plan is not None else FLOAT


def add_plans(model: nn.Module) -> list[AddPlan]:
    """The residual Adds the model computes as ORT's QLinearAdd in eval mode."""
    return [m.add_plan for m in model.modules() if isinstance(m, QBlock) and m.add_plan is not None]


def pool_plans(model: nn.Module) -> list[PoolPlan]:
    """The global pools the model computes as ORT's QLinearGlobalAveragePool in eval mode."""
    return [m.pool_plan for m in model.modules() if isinstance(m, QAvgPool) and m.pool_plan is not None]


def _per_tensor_input(m: QuantMixin) -> bool:
    """Both quantizers present, the input's per tensor."""
    return m.act_quant is not None and m.weight_quant is not None and m.act_quant.scale().numel() == 1


def _mode(m: QuantMixin, exact: bool, out_quant: Quantizer | None) -> Mode:
    if m.act_quant is None:
        return Mode.WEIGHT_ONLY
    if not exact:
        return Mode.FAKE_QUANT
    return Mode.ORT_KERNEL if out_quant is not None else Mode.SNAPPED


def _add_plan(n: torch.fx.Node, mods) -> tuple[str, AddPlan] | None:
    """For an Add of two quantizer outputs (a ResNet block's add_quant and its identity) that one quantizer alone
    reads: (block name, its plan)."""
    if not (n.op == "call_function" and n.target in (operator.add, torch.add) and len(n.args) == 2):
        return None
    qa, qb = (mods.get(x.target) if isinstance(x, torch.fx.Node) and x.op == "call_module" else None for x in n.args)
    if not (isinstance(qa, Quantizer) and isinstance(qb, Quantizer) and n.args[0].target.endswith(".add_quant")):
        return None
    q = output_quantizer(n, mods)
    return (n.args[0].target.rsplit(".", 1)[0], AddPlan(qa, qb, q)) if q is not None else None


def _bn_pairs(gm: torch.fx.GraphModule | None, mods) -> list[tuple[torch.fx.Node, torch.fx.Node]]:
    """(conv node, the BatchNorm node that alone reads it) pairs; none without a graph."""
    if gm is None:
        return []
    nodes = {n.name: n for n in gm.graph.nodes}
    return [(nodes[c], bn) for c, bn in conv_bn_pairs(gm, mods).items()]


def build_plan(model: nn.Module, int_bias: bool) -> dict[str, LayerPlan]:
    """Plan every quantized layer, residual Add and quantized global pool of `model` (scheme int_bias: integer
    biases and ORT's kernels), fold the snapped layers' BatchNorms, and hand each module its part. Returns the
    layers' plans by name."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (QConv2d, QLinear))}
    if all(m.act_quant is None for m in layers.values()):  # weight-only: nothing to read from the graph
        for m in layers.values():
            m.plan = LayerPlan(Mode.WEIGHT_ONLY)
        return {n: cast(LayerPlan, m.plan) for n, m in layers.items()}  # each plan was just set
    try:
        gm = trace(model)
    except QdgError:
        if int_bias:  # ORT's kernels are read from the graph
            raise
        gm = None  # the layers are still snapped, without a BatchNorm folded
    mods = dict(model.named_modules())
    node_of = {n.target: n for n in gm.graph.nodes if n.op == "call_module"} if gm is not None else {}
    bn_node = {conv.target: bn for conv, bn in _bn_pairs(gm, mods)}
    plans = {}
    for name, m in layers.items():
        uniform = _per_tensor_input(m) and m.act_quant.qdq_activations  # QuantizeLinear reproduces its grid
        ints = int_bias and _per_tensor_input(m) and not m.act_quant.transform  # (DAQ's codes are not the input's)
        out_node = bn_node.get(name) or node_of.get(name)
        out_q = output_quantizer(out_node, mods) if ints and uniform and out_node is not None else None
        bn = mods[bn_node[name].target] if name in bn_node and (uniform or ints) else None
        if bn is not None and uniform:  # a snapped layer folds its BatchNorm: that one is then an identity in eval
            bn = replace_module(model, bn_node[name].target, recast(bn, FoldedBatchNorm2d))
        plans[name] = LayerPlan(_mode(m, uniform, out_q), bn, ints, out_q)
    for name, p in plans.items():
        mods[name].plan = p
    if int_bias and gm is not None:
        for n in gm.graph.nodes:
            found = _add_plan(n, mods)
            if found is not None:
                mods[found[0]].add_plan = found[1]
            if n.op == "call_module" and isinstance(mods[n.target], QAvgPool) and (q := flatten_quant(n, mods)):
                mods[n.target].pool_plan = PoolPlan(q)
    return plans

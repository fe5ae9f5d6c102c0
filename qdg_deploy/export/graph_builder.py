"""The ONNX graph under construction: nodes, initializers, the tensor each fx node became, and the probes
(intermediate tensors export verify compares with torch). The lowering steps (export/lower_*.py) write into it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch.fx
from onnx import TensorProto, helper, numpy_helper

from ..errors import QdgError

if TYPE_CHECKING:
    from .records import ActRecord

INPUT, OUTPUT = "input", "logits"


@dataclass
class Settings:
    """What the export was asked for (lower_to_onnx's arguments, defaults resolved)."""

    target: str  # "ort" | "tensorrt"
    opset: int
    fp32: bool  # the float network: quantizers not written
    residual_qdq: bool  # TensorRT's placement: Adds read quantized tensors
    int_bias: bool  # biases inside the convs ORT runs as integer kernels
    graph: str = "exact"  # "exact": snapped layers, float64 norm/pool; "lean": plain Q/DQ (export/variants.py)

    @property
    def exact(self) -> bool:
        return self.graph == "exact"

    @property
    def ort_kernels(self) -> bool:
        """Target ort with integer biases: the layers, Adds and pools the plan computes as ORT's integer kernels
        are written as those kernels."""
        return self.target == "ort" and self.int_bias


def breadth_first(nodes: list[onnx.NodeProto], consts: set[str]) -> list[onnx.NodeProto]:
    """The nodes in breadth-first topological order: first those that read only constants (weight DQs), then each
    node once all its inputs exist, in the order they become ready. ONNX Runtime schedules a graph from the order
    it is given; in the writer's depth-first order (the fx order) it ran a ResNet block's downsample first, which
    kept the identity alive across the main branch and cost its kernels ~2 % (measured against quantize_static's
    graph, which is written this way, with the same kernels)."""
    made = {t for n in nodes for t in n.output}
    ready = [n for n in nodes if all(t in consts or t not in made for t in n.input if t)]
    waiting = {id(n): sum(1 for t in n.input if t in made) for n in nodes}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for t in dict.fromkeys(t for t in n.input if t in made):
            readers.setdefault(t, []).append(n)
    order, i = [], 0
    order.extend(ready)
    while i < len(order):
        for t in order[i].output:
            for r in readers.get(t, []):
                waiting[id(r)] -= sum(1 for x in r.input if x == t)
                if waiting[id(r)] == 0:
                    order.append(r)
        i += 1
    if len(order) != len(nodes):
        raise QdgError("the ONNX graph has a cycle")
    return order


@dataclass
class GraphBuilder:
    settings: Settings
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # fx node name -> ONNX tensor name
    probes: list[dict] = field(default_factory=list)
    weight_bits: dict[str, int] = field(default_factory=dict)  # code initializer -> trained bits
    quantized_inputs: dict[str, str] = field(default_factory=dict)  # ONNX tensor -> its first activation DQ
    qdq_cache: dict[tuple[int, str], tuple[str, ActRecord]] = field(default_factory=dict)  # (quantizer, tensor) -> DQ
    _uid: int = 0

    @property
    def target(self) -> str:
        return self.settings.target

    def uid(self, base: str) -> str:
        self._uid += 1
        return f"{base}_{self._uid}"

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def add(self, op: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> str:
        outs = [name] if n_out == 1 else [f"{name}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0]

    def arg(self, a) -> str:
        if not isinstance(a, torch.fx.Node):
            raise QdgError(f"cannot export a constant operand {a!r}")
        return self.names[a.name]

    def probe(self, kind: str, layer: str, tensor: str, fx: str | None = None) -> None:
        self.probes.append(
            {"kind": kind, "layer": layer, "tensor": tensor}
            if fx is None
            else {"kind": kind, "layer": layer, "fx": fx, "tensor": tensor}
        )

    def model(self, input_shape, out_shape, dynamic_batch: bool) -> onnx.ModelProto:
        batch = "batch" if dynamic_batch else 1
        graph = helper.make_graph(
            breadth_first(self.nodes, {t.name for t in self.inits}),
            "qdg_deploy",
            [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, *input_shape])],
            [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch, *out_shape])],
            self.inits,
        )
        opsets = [helper.make_opsetid("", self.settings.opset)]
        proto = helper.make_model(
            graph,
            opset_imports=opsets,
            producer_name="qdg-deploy",
            ir_version=helper.find_min_ir_version_for(opsets, ignore_unknown=True),
        )
        onnx.checker.check_model(proto, full_check=True)
        return proto

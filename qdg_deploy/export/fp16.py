"""The float remainder of a QDQ graph in FP16, for TensorRT 11's strongly typed networks (pure onnx + numpy).

TensorRT 11 takes each tensor's precision from the ONNX types (no FP16 builder flag), so `--fp16` rewrites the graph:
every float32 op outside the Q/DQ chains becomes float16; the Q/DQ chains stay exactly as exported, because
TensorRT fuses DequantizeLinear → Conv/Gemm → (pointwise ops) → QuantizeLinear into one INT8 kernel only when
no Cast sits inside the chain, and the scales must keep their float32 values. Casts go on the boundaries between
the two parts and, unless `keep_io=False`, on the graph's inputs and outputs so callers still feed and read FP32.

A node is kept in float32 ("locked") when it is a Q/DQ node, lies on a chain DequantizeLinear → op → pointwise
ops → QuantizeLinear (`chain_nodes`: the exact graph's Conv → Div → Round → Mul → Add snap included; a Cast there
breaks TensorRT's INT8 fusion, and Round of an accumulator in float16 is inexact above 2048, inf above 65504),
reads a DequantizeLinear output, feeds a QuantizeLinear, or sits between locked nodes on both sides.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .check import QDQ

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
# elementwise ops TensorRT fuses after a quantized Conv/Gemm (the exact graph's Div/Round/Mul snap, bias, activation)
POINTWISE = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Round",
        "Relu",
        "Clip",
        "LeakyRelu",
        "Sigmoid",
        "Tanh",
        "Erf",
        "Abs",
        "Neg",
        "Max",
        "Min",
        "Floor",
        "Ceil",
        "Sqrt",
        "Pow",
        "Exp",
        "HardSigmoid",
        "HardSwish",
        "Identity",
    }
)
FLOAT_ONLY_INPUTS = {("Resize", 2), ("Upsample", 1)}  # float32 whatever the data type (scales)


def _links(graph: onnx.GraphProto) -> tuple[dict[str, int], dict[str, list[int]], list[str]]:
    """(tensor → index of the node making it, tensor → indices of the nodes reading it, each node's op)."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    ops = [n.op_type for n in graph.node]
    return producer, consumers, ops


def _reach(starts: list[int], step, enter) -> set[int]:
    """Nodes reachable from `starts` by `step` (node → next nodes), entering only nodes `enter` accepts."""
    seen: set[int] = set()
    todo = [i for i in starts if enter(i)]
    while todo:
        i = todo.pop()
        if i not in seen:
            seen.add(i)
            todo.extend(j for j in step(i) if enter(j) and j not in seen)
    return seen


def chain_nodes(graph: onnx.GraphProto, keep_io: bool = True) -> set[int]:
    """Indices of the nodes on a path DequantizeLinear → op → pointwise ops → QuantizeLinear (Q/DQ excluded):
    the op reading the DQ, then the pointwise ops after it (TensorRT fuses those into the INT8 kernel), where a
    QuantizeLinear (with keep_io, a float32 graph output: the classifier's snap) is reachable further on. A
    non-pointwise op (a GroupNorm's Reshape, a pool) ends the chain, so a float block between two quantizers
    still runs in FP16."""
    producer, consumers, ops = _links(graph)
    after = lambda i: [c for o in graph.node[i].output for c in consumers.get(o, [])]  # noqa: E731
    before = lambda i: [producer[t] for t in graph.node[i].input if t in producer]  # noqa: E731
    heads = [j for i, op in enumerate(ops) if op == "DequantizeLinear" for j in after(i) if ops[j] not in QDQ]
    forward = set(heads) | _reach([j for i in heads for j in after(i)], after, lambda j: ops[j] in POINTWISE)
    ends = [j for i, op in enumerate(ops) if op == "QuantizeLinear" for j in before(i)]
    ends += [producer[o.name] for o in graph.output if keep_io and o.name in producer]
    backward = _reach(ends, before, lambda j: ops[j] != "DequantizeLinear")
    return forward & backward


def locked_nodes(graph: onnx.GraphProto, keep_io: bool = True) -> set[int]:
    """Indices of the nodes that stay float32: the Q/DQ chains (with keep_io, the graph's float32 inputs and
    outputs count as float32 neighbours, so a pass-through op next to them needs no Cast either)."""
    producer, consumers, ops = _links(graph)
    locked = {
        i
        for i, n in enumerate(graph.node)
        if ops[i] in QDQ
        or any(ops[producer[t]] == "DequantizeLinear" for t in n.input if t in producer)
        or any(ops[c] == "QuantizeLinear" for o in n.output for c in consumers.get(o, []))
    }
    locked |= chain_nodes(graph, keep_io)  # the whole fused chain, however many pointwise ops it holds
    boundary = {v.name for v in (*graph.input, *graph.output)} if keep_io else set()
    changed = True
    while changed:  # the pointwise ops between two locked nodes join the chain
        changed = False
        for i, n in enumerate(graph.node):
            if i in locked:
                continue
            ins = [producer[t] in locked for t in n.input if t in producer] + [t in boundary for t in n.input]
            outs = [c in locked for o in n.output for c in consumers.get(o, [])]
            outs += [True for o in n.output if o in boundary]
            if any(ins) and outs and all(outs):
                locked.add(i)
                changed = True
    return locked


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _half_tensor(t: onnx.TensorProto, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), name)


def convert_float_remainder(model: onnx.ModelProto, keep_io: bool = True) -> tuple[onnx.ModelProto, dict]:
    """(FP16 model, summary) — float32 tensors outside the Q/DQ chains in float16; Q/DQ nodes, their scales and
    zero points, and the ops of each chain byte for byte as they were."""
    types = _elem_types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    locked = locked_nodes(g, keep_io)
    n_before = len(g.node)
    inits = {t.name: t for t in g.initializer}
    producer = {o: i for i, n in enumerate(g.node) for o in n.output}
    graph_inputs = {v.name for v in g.input}

    def half_at_source(t: str) -> bool:
        """Whether tensor `t` is float16 where it is made (after the rewrite)."""
        if types.get(t) != FLOAT:
            return False
        if t in producer:
            return producer[t] not in locked
        return t in graph_inputs and not keep_io

    half_inits: dict[str, onnx.TensorProto]
    new_nodes, half_inits, casts = [], {}, {}

    def cast(t: str, to: int) -> str:
        key = (t, to)
        if key not in casts:
            casts[key] = f"{t}__to_{'fp16' if to == HALF else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [t], [casts[key]], to=to, name=f"{casts[key]}_cast"))
        return casts[key]

    for i, n in enumerate(g.node):
        half = i not in locked
        for k, t in enumerate(n.input):
            if not t or types.get(t) != FLOAT:
                continue
            want_half = half and (n.op_type, k) not in FLOAT_ONLY_INPUTS
            if t in inits:  # a weight of a float op: a float16 copy (the float32 one may serve a locked node)
                if want_half:
                    half_inits.setdefault(t, _half_tensor(inits[t], f"{t}__fp16"))
                    n.input[k] = half_inits[t].name
            elif half_at_source(t) != want_half:
                n.input[k] = cast(t, HALF if want_half else FLOAT)
        if half:
            for a in n.attribute:
                if n.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                    a.i = HALF
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT:  # Constant, ConstantOfShape
                    a.t.CopyFrom(_half_tensor(a.t, a.t.name))
        new_nodes.append(n)
    for o in g.output:  # float16 results leave as float32 (or, keep_io=False, as float16)
        if half_at_source(o.name):
            if keep_io:
                inner = f"{o.name}__fp16"
                for n in new_nodes:
                    n.output[:] = [inner if x == o.name else x for x in n.output]
                    n.input[:] = [inner if x == o.name else x for x in n.input]
                new_nodes.append(helper.make_node("Cast", [inner], [o.name], to=FLOAT, name=f"{o.name}_cast"))
            else:
                o.type.tensor_type.elem_type = HALF
    if not keep_io:
        for v in g.input:
            if v.type.tensor_type.elem_type == FLOAT:
                v.type.tensor_type.elem_type = HALF
    used = {t for n in new_nodes for t in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.node[:], g.initializer[:], g.value_info[:]
    g.node.extend(new_nodes)
    g.initializer.extend([*kept, *half_inits.values()])
    summary = {
        "fp16_nodes": n_before - len(locked),
        "fp32_nodes": len(locked),
        "fp16_initializers": len(half_inits),
        "casts_added": len(new_nodes) - n_before,
        "io_fp32": keep_io,
    }
    return out, summary

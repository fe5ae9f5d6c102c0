"""Run an exported ONNX model with ONNX Runtime (CPU) next to the torch fake-quant model and compare.

`compare` gives the report's agreement figures; `layer_divergence` runs both on a few inputs and
compares every intermediate tensor (each quantized layer's quantized input and each op's output) in
graph order, naming the first one where torch and ONNX Runtime differ by more than float noise.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from ..quant import Quantizer
from .onnx_writer import trace

# A tensor "diverges" when its max |torch - onnx| exceeds this fraction of its max |torch| (a single
# quantization step of an 8-bit tensor is ~1/127 of its range; float reordering is ~1e-6).
REL_TOL = 1e-3


def ort_session(model: onnx.ModelProto | bytes | str, threads: int = 1, level: str = "all",
                optimized_path: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose arg-max (predicted class) is the same in both logit arrays."""
    return float((a.argmax(1) == b.argmax(1)).mean())


@torch.no_grad()
def compare(model: nn.Module, session, batches, labels_known: bool = True, progress=None, task=None) -> dict:
    """Run both over (x, y) batches; returns logits-level figures and per-sample arrays."""
    model.eval()
    name = session.get_inputs()[0].name
    t_logits, o_logits, ys = [], [], []
    for x, y in batches:
        x = torch.as_tensor(x).float()
        t_logits.append(model(x).numpy())
        o_logits.append(session.run(None, {name: x.numpy()})[0])
        ys.append(np.asarray(y))
        if progress is not None:
            progress.update(task, advance=len(x))
    t, o, y = np.concatenate(t_logits), np.concatenate(o_logits), np.concatenate(ys)
    diff = np.abs(t - o)
    return {"torch_logits": t, "onnx_logits": o, "labels": y,
            "top1_agreement": top1_agreement(t, o), "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()), "n_samples": int(len(y))}


@torch.no_grad()
def layer_divergence(model: nn.Module, proto: onnx.ModelProto, probes: list[dict], x: torch.Tensor,
                     level: str = "all") -> dict:
    """Compare every probed intermediate tensor on input x; returns the per-layer table and the first divergence."""
    model.eval()
    gm = trace(model)
    values: dict[str, torch.Tensor] = {}
    acts: dict[str, torch.Tensor] = {}
    mods = dict(model.named_modules())
    hooks = []
    quantizers = {}  # probe layer -> the quantizer whose input decides its codes
    for p in probes:
        m = mods.get(p["layer"])
        if p["kind"] == "act":
            quantizers[p["layer"]] = m.act_quant
        elif isinstance(m, Quantizer):  # a standalone quantizer (residual Add input): its output is codes too
            quantizers[p["layer"]] = m
    for k, q in quantizers.items():
        hooks.append(q.register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(k, (i[0].detach().clone(),
                                                                                       o.detach()))))

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                values[n.name] = out.detach().clone()  # in-place ReLUs overwrite their input
            return out

    try:
        Recorder(gm).run(x)
    finally:
        for h in hooks:
            h.remove()
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    known = {o.name for o in m.graph.output}
    wanted = [p for p in probes if p["tensor"] not in known]
    for p in wanted:
        m.graph.output.append(onnx.helper.make_tensor_value_info(p["tensor"], onnx.TensorProto.FLOAT, None))
    sess = ort_session(m, level=level)
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x.numpy()})))
    rows, first = [], None
    for p in probes:
        quantized = p["kind"] == "act" or isinstance(mods.get(p["layer"]), Quantizer)
        pre = acts.get(p["layer"], (None, None))[0] if quantized else None
        if p["kind"] == "act":
            ref = acts.get(p["layer"], (None, None))[1]
        else:
            ref = values.get(p.get("fx"))
        if ref is None or p["tensor"] not in outs:
            continue
        ref = ref.numpy()
        got = outs[p["tensor"]]
        if ref.shape != got.shape:
            continue
        d = np.abs(ref - got)
        scale = float(np.abs(ref).max()) or 1.0
        bad = d > REL_TOL * scale
        row = {"tensor": f"{p['layer']} ({'quantized input' if p['kind'] == 'act' else 'output'})",
               "max_abs_diff": float(d.max()), "mismatch_fraction": float(bad.mean())}
        if pre is not None and bad.any():
            # how far from a rounding tie (in steps) the torch input was where the codes differ: ~0 means a
            # float-reordering difference upstream moved a value across a tie, not a wrong graph
            t = (pre / quantizers[p["layer"]].scale()).numpy()[bad]
            row["max_tie_distance"] = float(np.abs(t - np.floor(t) - 0.5).max())
            row["mismatches"] = int(bad.sum())
        rows.append(row)
        if first is None and bad.any():
            first = row["tensor"]
    return {"first_divergence": first, "layers": rows, "n_samples": int(len(x))}


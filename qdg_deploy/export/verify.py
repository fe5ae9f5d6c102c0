"""Run an exported ONNX model with ONNX Runtime (CPU) next to the torch fake-quant model and compare.

`verify_model` is what `export --verify` runs: agreement over a run's held-out domain and `out` splits
(the run's `Splits.scored_sets`), with and without ORT's graph optimizations, and per-layer detail when it is below 1.0.

`compare` gives the report's agreement figures; `layer_divergence` runs both on a few inputs and
compares every intermediate tensor (each quantized layer's quantized input and each op's output) in
graph order, naming the first one where torch and ONNX Runtime differ by more than float noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ..accuracy import iter_batches, make_progress
from ..device import module_device
from ..ort_session import ort_session
from ..quant import Quantizer
from ..quant.tracing import trace

# A tensor "diverges" when its max |torch - onnx| exceeds this fraction of its max |torch| (a single
# quantization step of an 8-bit tensor is ~1/127 of its range; float reordering is ~1e-6).
REL_TOL = 1e-3


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose arg-max (predicted class) is the same in both logit arrays."""
    return float((a.argmax(1) == b.argmax(1)).mean())


@torch.no_grad()
def compare(
    model: nn.Module,
    session,
    batches,
    labels_known: bool = True,
    progress=None,
    task=None,
    device: torch.device = torch.device("cpu"),
) -> dict:
    """Run both over (x, y) batches (torch on `device`); returns logits-level figures and per-sample arrays."""
    model.eval()
    name = session.get_inputs()[0].name
    t_logits, o_logits, ys = [], [], []
    for x, y in batches:
        x = torch.as_tensor(x).float()
        t_logits.append(model(x.to(device)).cpu().numpy())
        o_logits.append(session.run(None, {name: x.numpy()})[0])
        ys.append(np.asarray(y))
        if progress is not None:
            progress.update(task, advance=len(x))
    t, o, y = np.concatenate(t_logits), np.concatenate(o_logits), np.concatenate(ys)
    diff = np.abs(t - o)
    return {
        "torch_logits": t,
        "onnx_logits": o,
        "labels": y,
        "top1_agreement": top1_agreement(t, o),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "n_samples": int(len(y)),
    }


@torch.no_grad()
def layer_divergence(
    model: nn.Module,
    proto: onnx.ModelProto,
    probes: list[dict],
    x: torch.Tensor,
    level: str = "all",
    samples: list[int] | None = None,
) -> dict:
    """Compare every probed intermediate tensor on input x; returns the per-layer table and the first divergence.

    `samples`: compare only these rows of the batch. Run the whole batch a disagreement came from: ORT's float
    results depend on the batch (its kernels block by it), so a near-tie seen there may not recur in a smaller one."""
    model.eval()
    values, acts, quantizers = _torch_values(model, probes, x)
    outs = _onnx_values(proto, probes, x, level)
    mods = dict(model.named_modules())
    rows, first = [], None
    for p in probes:
        quantized = p["kind"] == "act" or isinstance(mods.get(p["layer"]), Quantizer)
        pre = acts.get(p["layer"], (None, None))[0] if quantized else None
        ref = acts.get(p["layer"], (None, None))[1] if p["kind"] == "act" else values.get(p.get("fx"))
        if ref is None or p["tensor"] not in outs or ref.shape != outs[p["tensor"]].shape:
            continue
        ref, got = ref.numpy(), outs[p["tensor"]]
        if samples is not None:
            ref, got = ref[samples], got[samples]
            pre = pre[samples] if pre is not None else None
        row = _row(p, ref, got, pre, quantizers.get(p["layer"]))
        rows.append(row)
        if first is None and row["mismatch_fraction"] > 0:
            first = row["tensor"]
    return {"first_divergence": first, "layers": rows, "n_samples": int(len(x) if samples is None else len(samples))}


def _torch_values(model: nn.Module, probes: list[dict], x: torch.Tensor):
    """Every fx node's output on x, and (input, output) of each quantizer a probe reads (its codes), by probe layer."""
    gm = trace(model)
    values: dict[str, torch.Tensor] = {}
    acts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    mods = dict(model.named_modules())
    quantizers = {}  # probe layer -> the quantizer whose input decides its codes
    for p in probes:
        m = mods.get(p["layer"])
        if p["kind"] == "act":
            quantizers[p["layer"]] = m.act_quant
        elif isinstance(m, Quantizer):  # a standalone quantizer (residual Add input): its output is codes too
            quantizers[p["layer"]] = m
    hooks = [
        q.register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(k, (i[0].detach().clone(), o.detach())))
        for k, q in quantizers.items()
    ]

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
    return values, acts, quantizers


def _onnx_values(proto: onnx.ModelProto, probes: list[dict], x: torch.Tensor, level: str) -> dict[str, np.ndarray]:
    """Every probed tensor of the ONNX graph on x (each made a graph output)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    known = {o.name for o in m.graph.output}
    for p in probes:
        if p["tensor"] not in known:
            m.graph.output.append(onnx.helper.make_tensor_value_info(p["tensor"], onnx.TensorProto.FLOAT, None))
    sess = ort_session(m, level=level)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x.numpy()})))


def _row(p: dict, ref: np.ndarray, got: np.ndarray, pre, quantizer) -> dict:
    d = np.abs(ref - got)
    scale = float(np.abs(ref).max()) or 1.0
    bad = d > REL_TOL * scale
    row = {
        "tensor": f"{p['layer']} ({'quantized input' if p['kind'] == 'act' else 'output'})",
        "max_abs_diff": float(d.max()),
        "mismatch_fraction": float(bad.mean()),
    }
    if pre is not None and bad.any():
        # how far from a rounding tie (in steps) the torch input was where the codes differ: ~0 means a
        # float-reordering difference upstream moved a value across a tie, not a wrong graph
        t = (pre / quantizer.scale()).numpy()[bad]
        row["max_tie_distance"] = float(np.abs(t - np.floor(t) - 0.5).max())
        row["mismatches"] = int(bad.sum())
    return row


def verify_model(
    model: nn.Module,
    proto: onnx.ModelProto,
    probes: list[dict],
    sets: dict,
    *,
    batch_size: int = 128,
    console=None,
    device: torch.device = torch.device("cpu"),
) -> dict:
    """Agreement of ONNX Runtime CPU (default optimizations, as deployed) with the torch model over `sets`, torch on
    `device` (bit-for-bit agreement is a CPU property: GPU kernels sum in other orders). The model is measured on
    `device` and left on the device it came on."""
    home = module_device(model) or torch.device("cpu")
    try:
        return _verify_on(model.to(device), proto, probes, sets, batch_size, console, device)
    finally:
        model.to(home)


def _verify_on(model, proto, probes, sets, batch_size, console, device) -> dict:
    sess = ort_session(proto, threads=torch.get_num_threads(), level="all")
    raw = ort_session(proto, threads=torch.get_num_threads(), level="none")
    per, all_t, all_o, all_r = {}, [], [], []
    total = sum(len(d) for d in sets.values())
    with make_progress(console, transient=True) as progress:
        task = progress.add_task("verify (torch vs ORT)", total=total, info="")
        for name, data in sets.items():
            batches = list(iter_batches(data, batch_size))
            r = compare(model, sess, batches, progress=progress, task=task, device=device)
            iname = raw.get_inputs()[0].name
            r_raw: dict[str, Any] = {
                "onnx_logits": np.concatenate(
                    [raw.run(None, {iname: torch.as_tensor(x).float().numpy()})[0] for x, _ in batches]
                )
            }
            r_raw["top1_agreement"] = top1_agreement(r["torch_logits"], r_raw["onnx_logits"])
            per[name] = {k: r[k] for k in ("top1_agreement", "max_abs_diff", "mean_abs_diff", "n_samples")}
            per[name]["onnx_acc"] = float((r["onnx_logits"].argmax(1) == r["labels"]).mean())
            per[name]["torch_acc"] = float((r["torch_logits"].argmax(1) == r["labels"]).mean())
            per[name]["unoptimized_top1_agreement"] = r_raw["top1_agreement"]
            all_t.append(r["torch_logits"])
            all_o.append(r["onnx_logits"])
            all_r.append(r_raw["onnx_logits"])
            per[name]["_inputs"] = batches
    t, o, u = np.concatenate(all_t), np.concatenate(all_o), np.concatenate(all_r)
    d = np.abs(t - o)
    heldout = next(k for k in per if k.startswith("heldout"))
    result = {
        "top1_agreement": top1_agreement(t, o),
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "n_samples": int(len(t)),
        "onnx_acc": per[heldout]["onnx_acc"],
        "torch_acc": per[heldout]["torch_acc"],
        "acc_split": heldout,
        "unoptimized": {
            "top1_agreement": top1_agreement(t, u),
            "max_abs_diff": float(np.abs(t - u).max()),
            "note": "ORT with graph optimizations off: the ONNX graph's own arithmetic, no "
            "int32 bias rounding or fused integer kernels",
        },
    }
    if result["top1_agreement"] < 1.0 or result["unoptimized"]["top1_agreement"] < 1.0:
        batches = [torch.as_tensor(x).float() for b in per.values() for x, _ in b["_inputs"]]
        bad = np.flatnonzero((t.argmax(1) != o.argmax(1)) | (t.argmax(1) != u.argmax(1)))[:8]
        top2 = np.sort(t[bad], axis=1)[:, -2:]
        # torch_margin below max_abs_diff: the two best logits were (nearly) tied, float noise picks the class
        result["disagreements"] = [
            {
                "index": int(i),
                "torch_top1": int(t[i].argmax()),
                "onnx_top1": int(o[i].argmax()),
                "torch_margin": float(m[1] - m[0]),
                "max_abs_diff": float(d[i].max()),
            }
            for i, m in zip(bad, top2)
        ]
        # the batch of the first disagreement, as compare() ran it, and that batch's disagreeing rows
        ends = np.cumsum([len(b) for b in batches])
        k = int(np.searchsorted(ends, bad[0], side="right"))
        start = int(ends[k] - len(batches[k]))
        rows = [int(i - start) for i in bad if start <= i < ends[k]]
        result["layer_divergence"] = layer_divergence(model.cpu(), proto, probes, batches[k], level="all", samples=rows)
    for v in per.values():
        v.pop("_inputs")
    result["splits"] = per
    result["torch_device"] = str(device)
    return result

"""How tests/data/golden was made: the exports the code wrote at 785620a, before issue 14's refactor.

    PYTHONPATH=. python tests/data/make_golden.py train   # the four tiny mnist-cnn runs (weights committed)
    PYTHONPATH=. python tests/data/make_golden.py hashes  # golden.json: SHA-256 of every export, and its report

Training is float-nondeterministic across CPUs, so the runs' weights are committed and only the exports are
recomputed: an export from fixed weights is deterministic. The ResNet cases are not stored (44 MB each): their
weights, BatchNorm statistics and quantizer steps are set by `resnet_case` from a seeded generator with
numpy's generator and elementwise or order-independent arithmetic only (max), so every CPU builds the same network.

Deliberate changes since: issue 16 writes weight-only layers on target ort as codes ─ Cast ─ Mul (ORT folds those);
only the entries that holds for (paper and alignq onnx:ort, resnet18 paper onnx:ort) were re-recorded by running
`hashes` and copying those three entries into golden.json, the rest kept as recorded.
Issue 16 also keeps a weight-only model's global pool in float32 (no activation quantizer follows it, so the float64
mean bought nothing and cost 2–3 % of its latency): the `paper` entries (run and resnet18, both targets) were
re-recorded for that.
Issue 18 writes an `ort` model's snapped classifier as the QGemm ORT runs it (Gemm, then the bias Add: no snap ops)
and its quantized global pool as QLinearGlobalAveragePool: the two `ort` onnx:ort entries were re-recorded.
Issue 18 then writes every graph's nodes in breadth-first order (export/graph_builder.breadth_first): every entry was
re-recorded, after checking that each of the 18 exports holds the same nodes and initializers in either order.
Issue 29 writes metadata_props into every export (class names, mean/std, toolkit version: export/metadata.py): the
hashes and sizes here are the graph's, the file without its metadata_props (`graph_only`), so golden.json was left as
recorded, and a new version number does not change it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
# name -> train() overrides: paper / trt / ort QT-DoG runs and an AlignQ (DAQ W4A4, DANN) run on mnist-cnn
RUNS = {
    "paper": dict(method="qtdog", scheme="paper", test_env="0"),
    "trt": dict(method="qtdog", scheme="trt", test_env="0"),
    "ort": dict(method="qtdog", scheme="ort", test_env="0"),
    "alignq": dict(method="alignq", source="0", target="15", bits=4),
}
RESNETS = ("paper", "trt", "ort")
RESNET_SHAPE = (3, 32, 32)
TARGETS = ("ort", "tensorrt")
PATH_KEYS = ("run", "path")  # report keys that name where the files were written


def train_runs() -> None:
    from qdg_deploy.train import resolve_hparams, train_one

    for name, over in RUNS.items():
        hp = resolve_hparams("rotated-mnist", steps=6, q_steps=2, checkpoint_freq=3, seed=0, threads=1, **over)
        train_one(hp, GOLDEN / name, overwrite=True)


def resnet_case(scheme: str) -> torch.nn.Module:
    """A quantized resnet18 (3 input channels, 7 classes), the same bits on every CPU (see the module docstring)."""
    import numpy as np

    from qdg_deploy.models import build_model
    from qdg_deploy.quant import Quantizer, get_scheme, quant_layers, quantize_model

    # pool=False: these files predate the scheme's pool quantizer (issue 16); they pin the path that runs trained
    # before it take (their config.json has no "pool" key); tests/test_pool_quant.py covers the new one
    net = quantize_model(build_model("resnet18", 3, 7), dataclasses.replace(get_scheme(scheme), pool=False))
    rng = np.random.default_rng(0)  # numpy's generator and float32 elementwise arithmetic: the same on every CPU
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if not t.is_floating_point() or "_quant." in name:
                continue
            u = torch.from_numpy(rng.random(t.shape, dtype=np.float32))
            if name.endswith("running_var") or (t.dim() == 1 and name.endswith("weight")):
                t.copy_(u + np.float32(0.5))  # variances and BatchNorm gammas in [0.5, 1.5)
            elif t.dim() > 1:
                bound = np.float32(1 / np.sqrt(t[0].numel()))
                t.copy_((u - np.float32(0.5)) * (2 * bound))  # like kaiming_uniform: +-1/sqrt(fan_in)
            else:
                t.copy_(u - np.float32(0.5))  # biases, BatchNorm betas and means
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight[0] = -m.weight[0]  # a negative gamma: the fold flips that channel's codes
        weight_quants = set()
        for m in quant_layers(net).values():
            if m.weight_quant is not None:
                wq = m.weight_quant
                amax = m.weight.detach().abs().reshape(m.weight.shape[0], -1).amax(1)
                wq.step.copy_((amax / wq.qmax).reshape(wq.step.shape) if wq.step.dim() else amax.max() / wq.qmax)
                weight_quants.add(id(wq))
        i = 0
        for m in net.modules():
            if isinstance(m, Quantizer) and id(m) not in weight_quants:
                m.step.fill_(0.02 + 0.001 * i)
                if m.learned_zp:
                    m.zero_point.fill_(float(i % 7 - 3))
                m.initialized.fill_(True)
                i += 1
    return net.eval()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def graph_only(path: Path, report: dict) -> tuple[str, dict]:
    """SHA-256 of the exported file without its metadata_props, and the report's sizes without them (the
    exporter adds the same metadata to the float graph it measures fp32_bytes on, so both shrink alike)."""
    from qdg_deploy.export.metadata import without_metadata

    data = path.read_bytes()
    graph = without_metadata(data)
    meta = len(data) - len(graph)
    assert meta > 0, f"{path}: no metadata_props"
    report = dict(report)
    if "file_bytes" in report:
        report["file_bytes"] -= meta
        report["fp32_bytes"] -= meta
        report["size_ratio"] = round(report["file_bytes"] / report["fp32_bytes"], 4)
        report["packed_ratio"] = round(report["packed_bytes"] / report["fp32_bytes"], 4)
    return hashlib.sha256(graph).hexdigest(), report


def _report(info: dict) -> dict:
    """The parts of export_onnx's info that reach the .export.json report, JSON-normalized."""
    keep = {k: v for k, v in info.items() if k not in ("proto", "probes", "weight_bits")}
    return json.loads(json.dumps(keep, default=str))


def run_exports(name: str) -> dict:
    """SHA-256 of `export_run_dir`'s files (onnx on both targets, onnx-fp32) and its report without paths."""
    from qdg_deploy.export import export_run_dir

    out = {}
    with tempfile.TemporaryDirectory() as d:
        for fmt, target in [("onnx", t) for t in TARGETS] + [("onnx-fp32", "ort")]:
            path = Path(d) / f"{fmt}-{target}.onnx"
            report = export_run_dir(GOLDEN / name, fmt=fmt, target=target, out=path, verify=False)
            digest, report = graph_only(path, {k: v for k, v in report.items() if k not in PATH_KEYS})
            out[f"{fmt}:{target}"] = {"sha256": digest, "report": report}
    return out


def resnet_exports(scheme: str) -> dict:
    """SHA-256 of export_onnx's file on both targets for resnet_case(scheme), and its info."""
    from qdg_deploy.export import export_onnx

    out = {}
    with tempfile.TemporaryDirectory() as d:
        for target in TARGETS:
            path = Path(d) / f"{target}.onnx"
            info = export_onnx(resnet_case(scheme), RESNET_SHAPE, path, target=target)
            digest, report = graph_only(path, _report(info))
            out[f"onnx:{target}"] = {"sha256": digest, "report": report}
    return out


def write_hashes() -> None:
    torch.set_num_threads(1)
    golden = {"runs": {n: run_exports(n) for n in RUNS}, "resnet18": {s: resnet_exports(s) for s in RESNETS}}
    (HERE / "golden.json").write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    {"train": train_runs, "hashes": write_hashes}[sys.argv[1]]()

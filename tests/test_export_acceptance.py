"""Issue 8's acceptance sweep (slow): every model × weights × scheme × bits × target, agreement on the held-out domain.

pytest -m slow tests/test_export_acceptance.py          # asserts
python tests/test_export_acceptance.py [--quick] [--arch resnet18,mnist-cnn] [--targets ort,tensorrt,tensorrt+residual]
    [--json PATH]  # the figures
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import ConcatDataset, Subset

from qdg_deploy.data import get_dataset, split_domains
from qdg_deploy.export import check_tensorrt_rules, export_onnx, verify_model
from qdg_deploy.models import build_model
from qdg_deploy.quant import get_scheme, quantize_model

CONFIGS = (
    [("trt", w, 8) for w in (8, 7, 4, 2)]
    + [("trt", w, 4) for w in (8, 7, 4, 2)]
    + [("paper", None, None), ("ort", None, None)]
)


def heldout(n: int | None = None):
    ds = get_dataset("rotated-mnist")
    splits = split_domains(ds, 0.2, 0)
    data = ConcatDataset([splits[0].in_eval, splits[0].out_eval])
    return {"heldout:0": Subset(data, range(min(n or len(data), len(data))))}, splits


def random_model(arch, scheme, bits, act_bits, calib):
    torch.manual_seed(0)
    m = build_model(arch, 1, 10)
    quantize_model(m, get_scheme(scheme, bits=bits, act_bits=act_bits))
    m.eval()
    with torch.no_grad():
        m(calib)  # initializes the activation quantizers from data
    return m


def trained_model(arch, scheme, bits, act_bits, out: Path):
    from qdg_deploy.runs import load_run
    from qdg_deploy.train import resolve_hparams, train_one

    hp = resolve_hparams(
        "rotated-mnist",
        method="qtdog",
        arch=arch,
        scheme=scheme,
        bits=bits,
        act_bits=act_bits,
        steps=4,
        q_steps=1,
        checkpoint_freq=4,
        batch_size=8,
        test_env="0",
    )
    train_one(hp, out, overwrite=True)
    return load_run(out).model


def one(model, target, sets, tmp: Path, residual_qdq: bool = False) -> dict:
    info = export_onnx(model, (1, 28, 28), tmp / f"m_{target}.onnx", target=target, residual_qdq=residual_qdq)
    r = verify_model(model, info["proto"], info["probes"], sets)
    row = {k: r[k] for k in ("top1_agreement", "max_abs_diff", "n_samples")}
    row["unoptimized_agreement"] = r["unoptimized"]["top1_agreement"]
    row["first_divergence"] = r.get("layer_divergence", {}).get("first_divergence")
    ties = [x["max_tie_distance"] for x in r.get("layer_divergence", {}).get("layers", []) if "max_tie_distance" in x]
    row["first_tie_distance"] = ties[0] if ties else None  # ~0: a float-rounding near-tie flipped one code
    row["min_torch_margin"] = min((x["torch_margin"] for x in r.get("disagreements", [])), default=None)
    row.update(
        size_ratio=info["size_ratio"],
        packed_ratio=info["packed_ratio"],
        requantized=len([e for e in info["layers"] if "requantized" in e.get("act", {})]),
        ort_fused=len(info.get("ort_fused_layers", [])),
    )
    if target == "tensorrt":
        row["check_violations"] = len(check_tensorrt_rules(info["proto"]))
    return row


def sweep(
    archs=("mnist-cnn", "resnet18"),
    kinds=("random", "trained"),
    n=None,
    configs=CONFIGS,
    log=print,
    targets=("ort", "tensorrt"),
):
    sets, splits = heldout(n)
    calib = torch.stack([splits[1].train[i][0] for i in range(64)])
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for arch in archs:
            for kind in kinds:
                for scheme, bits, act_bits in configs:
                    model = (
                        random_model(arch, scheme, bits, act_bits, calib)
                        if kind == "random"
                        else trained_model(arch, scheme, bits, act_bits, tmp / "run")
                    )
                    for target in targets:
                        residual = target.endswith("+residual")
                        row = {
                            "arch": arch,
                            "weights": kind,
                            "scheme": scheme,
                            "bits": bits,
                            "act_bits": act_bits,
                            "target": target,
                            **one(model, target.split("+")[0], sets, tmp, residual),
                        }
                        rows.append(row)
                        log(json.dumps(row))
    return rows


def exact_expected(row) -> bool:
    """Where the issue asks for agreement exactly 1.0 (ort scheme → tensorrt is 'as measured')."""
    return not (row["scheme"] == "ort" and row["target"] == "tensorrt")


@pytest.mark.slow
def test_acceptance_sweep():
    torch.set_num_threads(1)
    rows = sweep(n=300, kinds=("random",), log=lambda s: None)
    for row in rows:
        if exact_expected(row):
            assert row["top1_agreement"] == 1.0, row
        if row["scheme"] == "trt":  # snapped layers: the logits are the same floats, bit for bit
            assert row["max_abs_diff"] == 0.0, row
        if row["target"] == "tensorrt":
            assert row["check_violations"] == 0, row


if __name__ == "__main__":
    torch.set_num_threads(1)
    quick = "--quick" in sys.argv
    archs = (
        tuple(sys.argv[sys.argv.index("--arch") + 1].split(",")) if "--arch" in sys.argv else ("mnist-cnn", "resnet18")
    )
    targets = (
        tuple(sys.argv[sys.argv.index("--targets") + 1].split(",")) if "--targets" in sys.argv else ("ort", "tensorrt")
    )
    result = sweep(
        archs=archs, n=200 if quick else None, kinds=("random",) if quick else ("random", "trained"), targets=targets
    )
    if "--json" in sys.argv:
        Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(result, indent=1))

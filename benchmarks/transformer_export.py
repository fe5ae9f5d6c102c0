"""Export acceptance for transformers (issue 30): a timm model at random init, quantized with each scheme, exported
for both targets; prints per line the file size against FP32, ORT CPU agreement with torch and max |Δlogit|, what
ORT fuses, and `check --target tensorrt`'s violations.

    PYTHONPATH=$PWD python benchmarks/transformer_export.py --arch deit_small_patch16_224 --size 224
    PYTHONPATH=$PWD python benchmarks/transformer_export.py --arch convnext_atto --size 224

Models come from timm.create_model; once the model zoo's `build_model("timm:NAME", ...)` is merged, --zoo builds
them through it instead.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch


def build(arch: str, zoo: bool, classes: int) -> torch.nn.Module:
    if zoo:
        from qdg_deploy.models import build_model

        return build_model(f"timm:{arch}", 3, classes)
    import timm

    return timm.create_model(arch, num_classes=classes)


def run(arch: str, size: int, schemes: list[str], samples: int, zoo: bool, classes: int) -> list[dict]:
    import onnxruntime as ort

    from qdg_deploy.export.api import export_onnx
    from qdg_deploy.export.check import check_tensorrt_rules
    from qdg_deploy.quant import get_scheme, quantize_model

    torch.manual_seed(0)
    x = torch.randn(samples, 3, size, size)
    rows = []
    for scheme in schemes:
        m = build(arch, zoo, classes)
        quantize_model(m, get_scheme(scheme))
        with torch.no_grad():
            m.train()
            m(torch.randn(8, 3, size, size))  # LSQ's first forward sets the activation steps
        m.eval()
        with torch.no_grad():
            ref = torch.cat([m(b) for b in x.split(16)]).numpy()
        for target in ("ort", "tensorrt"):
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "m.onnx"
                info = export_onnx(m, (3, size, size), path, target=target)
                sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                got = np.concatenate([sess.run(None, {"input": b.numpy()})[0] for b in x.split(16)])
            row = {
                "arch": arch,
                "scheme": scheme,
                "target": target,
                "file_bytes": info["file_bytes"],
                "fp32_bytes": info["fp32_bytes"],
                "size_ratio": info["size_ratio"],
                "packed_ratio": info["packed_ratio"],
                "agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
                "max_abs_logit_diff": float(np.abs(ref - got).max()),
                "samples": samples,
                "ort_fused_layers": len(info.get("ort_fused_layers", [])),
                "ort_unfused_layers": info.get("ort_unfused_layers", []),
                "trt_violations": len(check_tensorrt_rules(info["proto"])) if target == "tensorrt" else None,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="deit_small_patch16_224")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--schemes", default="paper,trt,ort")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--zoo", action="store_true", help="build through qdg_deploy.models.build_model('timm:ARCH')")
    a = ap.parse_args()
    torch.set_num_threads(2)
    run(a.arch, a.size, a.schemes.split(","), a.samples, a.zoo, a.classes)


if __name__ == "__main__":
    main()

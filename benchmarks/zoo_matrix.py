"""Which torchvision classification models go through calibrate → export → check, printed as JSON.

Every model of `torchvision.models.list_models(module=torchvision.models)` (or --families / --models), random init,
10 classes, at the smallest of SIZES its float forward accepts: the supported-op check (the one `quantize` runs
before any work); then per scheme (--schemes, default ort and trt) the Python API's quantize, a minmax calibration
on 2 × 2 random images, the export for the scheme's target (ort → ort, trt → tensorrt) and ONNX Runtime CPU
against the torch model on 4 other images (top-1 agreement, max |Δlogit|), plus `check --target tensorrt`'s
rules on the tensorrt export. One JSON file per model in --out (a model with a file is skipped: resumable); at the
end the support matrix goes into README.md between the zoo-matrix markers (by family) and docs/zoo.md (per model).

    nice -n 10 python benchmarks/zoo_matrix.py --families resnet,mobilenet_v3   # a few families
    python benchmarks/zoo_matrix.py --report-only                                # rewrite README/docs from --out
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torchvision

import qdg_deploy
from qdg_deploy.export.check import check_tensorrt_rules
from qdg_deploy.export.supported import unsupported_op
from qdg_deploy.ort_session import ort_session

SIZES = (32, 64, 96, 128, 160, 224)
ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- zoo-matrix:start -->", "<!-- zoo-matrix:end -->"
# family by name prefix, longest first; the target families of issue 29 first in the table
FAMILIES = [
    "resnet",
    "resnext",
    "wide_resnet",
    "mobilenet_v2",
    "mobilenet_v3",
    "efficientnet",
    "regnet",
    "mnasnet",
    "shufflenet",
    "efficientnet_v2",
    "densenet",
    "googlenet",
    "inception",
    "squeezenet",
    "alexnet",
    "vgg",
    "convnext",
    "vit",
    "swin",
    "maxvit",
]


def family(name: str) -> str:
    return max(
        (f for f in FAMILIES if name.startswith(f) and not (f == "efficientnet" and "_v2" in name)),
        key=len,
        default=name,
    )


def _smallest_size(net) -> int:
    for s in SIZES:
        try:
            with torch.no_grad():
                net(torch.zeros(1, 3, s, s))
            return s
        except Exception:  # noqa: BLE001, S112 (any failure: this size is too small)
            continue
    raise RuntimeError(f"no input size in {SIZES} works")


def _scheme(net_fn, name: str, scheme: str, size: int, d: Path) -> dict:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = qdg_deploy.quantize(net_fn().eval(), scheme)
    qdg_deploy.calibrate(model, [torch.randn(2, 3, size, size, generator=g) for _ in range(2)], "minmax")
    target = "tensorrt" if scheme == "trt" else "ort"
    info = qdg_deploy.export_onnx(model, (3, size, size), d / f"{name}-{scheme}.onnx", target=target)
    x = torch.randn(4, 3, size, size, generator=g)
    with torch.no_grad():
        ref = model(x).numpy()
    s = ort_session(info["proto"])
    got = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    out = {
        "target": target,
        "agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(ref - got).max()),
    }
    if target == "tensorrt":
        out["tensorrt_violations"] = len(check_tensorrt_rules(info["proto"]))
    else:
        out["ort_fused_layers"], out["ort_unfused_layers"] = (
            len(info.get("ort_fused_layers", [])),
            len(info.get("ort_unfused_layers", [])),
        )
    return out


def run_model(name: str, schemes: list[str]) -> dict:
    t0 = time.time()

    def net_fn():
        return torchvision.models.get_model(name, weights=None, num_classes=10)

    net = net_fn().eval()
    row = {"model": name, "family": family(name), "params": sum(p.numel() for p in net.parameters())}
    try:
        row["input_size"] = _smallest_size(net)
        refused = unsupported_op(net)
    except Exception as e:  # noqa: BLE001 untraceable or no size: refused as quantize would refuse it
        refused = str(e).splitlines()[0]
    del net
    if refused:
        row.update(status="refused", refused=refused, seconds=round(time.time() - t0, 1))
        return row
    row["schemes"] = {}
    with tempfile.TemporaryDirectory() as d:
        for scheme in schemes:
            try:
                row["schemes"][scheme] = _scheme(net_fn, name, scheme, row["input_size"], Path(d))
            except Exception as e:  # noqa: BLE001 (recorded per model)
                row["schemes"][scheme] = {
                    "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                    "trace": traceback.format_exc(limit=3)[-600:],
                }
    ok = all(
        r.get("agreement") == 1.0 and not r.get("tensorrt_violations") and "error" not in r
        for r in row["schemes"].values()
    )
    row.update(status="pass" if ok else "fail", seconds=round(time.time() - t0, 1))
    return row


def _cell(r: dict) -> str:
    if "error" in r:
        return "error: " + r["error"][:60]
    s = f"{r['agreement']:.2f} / {r['max_abs_logit_diff']:.2g}"
    if "tensorrt_violations" in r:
        s += f", {r['tensorrt_violations']} viol."
    return s


def write_report(rows: list[dict], schemes: list[str]) -> None:
    by_fam: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["model"]):
        by_fam.setdefault(r["family"], []).append(r)
    order = [f for f in FAMILIES if f in by_fam] + sorted(f for f in by_fam if f not in FAMILIES)
    lines = ["| family | models | pass | refused (first op) / failing |", "|---|---|---|---|"]
    for f in order:
        rs = by_fam[f]
        npass = sum(r["status"] == "pass" for r in rs)
        notes = sorted({_short(r) for r in rs if r["status"] != "pass"})
        lines.append(f"| {f} | {len(rs)} | {npass} | {'; '.join(notes)[:120]} |")
    total = sum(r["status"] == "pass" for r in rows)
    n_all = len(torchvision.models.list_models(module=torchvision.models))
    summary = (
        f"{total} of the {len(rows)} models run so far (of torchvision's {n_all} classification models) pass "
        f"(random init, smallest input, "
        f"schemes {', '.join(schemes)}: agreement 1.0 on ONNX Runtime CPU, 0 TensorRT-rule violations); "
        f"per model: [docs/zoo.md](docs/zoo.md). `python benchmarks/zoo_matrix.py` rewrites this table."
    )
    block = "\n".join([START, "", summary, "", *lines, "", END])
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.DOTALL)
    else:
        text = text.rstrip("\n") + "\n\n## Model zoo support matrix\n\n" + block + "\n"
    readme.write_text(text)
    head = "| model | family | input | status | " + " | ".join(f"{s}: agreement / max abs Δlogit" for s in schemes)
    doc = [
        "# torchvision model zoo: calibrate → export → check",
        "",
        (
            "Written by `benchmarks/zoo_matrix.py` (random init, 10 classes, minmax calibration on 4 random images, "
            "4 other images compared; `ort` exported for ONNX Runtime, `trt` for TensorRT and checked against its "
            "rules). Refused models name the first operation the exporter cannot lower."
        ),
        "",
        head + " | seconds |",
        "|" + "---|" * (5 + len(schemes)),
    ]
    for r in sorted(rows, key=lambda r: (FAMILIES.index(r["family"]) if r["family"] in FAMILIES else 99, r["model"])):
        cells = (
            [_cell(r["schemes"][s]) if s in r.get("schemes", {}) else "" for s in schemes]
            if r["status"] != "refused"
            else [r["refused"][:90]] + [""] * (len(schemes) - 1)
        )
        doc.append(
            f"| {r['model']} | {r['family']} | {r.get('input_size', '')} | {r['status']} | "
            + " | ".join(c.replace("|", "/") for c in cells)
            + f" | {r['seconds']} |"
        )
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "zoo.md").write_text("\n".join(doc) + "\n")


def _short(r: dict) -> str:
    if r["status"] == "refused":
        m = re.search(r"of type (\w+)|function '([\w.]+)'|method \.(\w+)", r["refused"])
        return next(g for g in m.groups() if g) if m else r["refused"][:40]
    return f"{r['model']} fails"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", help="comma-separated family prefixes (resnet, mobilenet_v3, ...)")
    ap.add_argument("--models", help="comma-separated model names")
    ap.add_argument("--schemes", default="ort,trt")
    ap.add_argument("--out", default="benchmarks/results/zoo", help="one JSON per model (resumable)")
    ap.add_argument("--skip", default="", help="comma-separated model names not to run (e.g. the largest)")
    ap.add_argument("--report-only", action="store_true", help="only rewrite README.md / docs/zoo.md from --out")
    ap.add_argument("--no-report", action="store_true", help="do not touch README.md / docs/zoo.md")
    a = ap.parse_args(argv)
    schemes = a.schemes.split(",")
    names = torchvision.models.list_models(module=torchvision.models)
    if a.models:
        names = [n for n in names if n in a.models.split(",")]
    if a.families:
        names = [n for n in names if family(n) in a.families.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if not a.report_only:
        torch.set_num_threads(2)
        for name in names:
            f = out / f"{name}.json"
            if f.exists():
                continue
            if name in a.skip.split(","):
                continue
            row = run_model(name, schemes)
            f.write_text(json.dumps(row, indent=1))
            print(
                json.dumps(
                    {k: v for k, v in row.items() if k != "schemes"}
                    | {
                        "schemes": {
                            s: {k: v for k, v in r.items() if k != "trace"} for s, r in row.get("schemes", {}).items()
                        }
                    }
                ),
                flush=True,
            )
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    print(
        json.dumps(
            {
                "models": len(rows),
                "pass": sum(r["status"] == "pass" for r in rows),
                "refused": sum(r["status"] == "refused" for r in rows),
                "fail": sum(r["status"] == "fail" for r in rows),
            }
        )
    )
    if not a.no_report and rows:
        write_report(rows, schemes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

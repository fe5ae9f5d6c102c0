"""QT-DoG on a small ViT (issue 30), on the embedded rotated-MNIST, as one resumable sweep; prints JSON.

    python benchmarks/vit_accuracy.py [--out sweeps/vit] [--jobs 2] [--steps 1000] [--seeds 0,1,2]
                                      [--test-envs 0,75] [--lr 1e-3]

The network is `vit-mnist` (qdg_deploy/models/vit_mnist.py: timm's VisionTransformer, 7×7 patches, width 64,
depth 4, 4 heads). Runs through `qdg-deploy sweep` (a killed benchmark resumes where it stopped): ERM with SWAD
(its run also keeps its result without averaging: the ERM_ViT row), QT-DoG W7 (`paper`: every Linear and the
patch embedding at 7 bits, classifier float) with SWAD, QT-DoG W8A8 `trt` with SWAD, for each held-out domain and
seed; the EoQ(3) ensemble of the W7 runs' seeds; then `qdg-deploy report` (the table). Every other hyperparameter
is the embedded set's default; --lr and --steps are the only knobs, chosen on training-domain validation only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ERM, QT, W8 = "erm:swad=true", "qtdog", "qtdog:scheme=trt"


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "qdg_deploy.cli", *args], check=True)


def avg(rows: dict, label: str) -> float | None:
    r = rows.get(label)
    return None if r is None or r.get("avg") is None else 100 * r["avg"]


def check(value, bound, test: str) -> dict:
    met = None if value is None or bound is None else (value >= bound if test == ">=" else value > bound)
    return {
        "value": None if value is None else round(value, 2),
        "bound": None if bound is None else round(bound, 2),
        "test": test,
        "met": met,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="sweeps/vit")
    ap.add_argument("--jobs", default="2")
    ap.add_argument("--steps", default="1000")
    ap.add_argument("--checkpoint-freq", default="50")
    ap.add_argument("--q-steps", default="100")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--test-envs", default="0,75")
    ap.add_argument("--lr", default="1e-3")
    ap.add_argument("--arch", default="vit-mnist")
    a = ap.parse_args(argv)
    out = Path(a.out)
    sets = [
        f"steps={a.steps}",
        f"checkpoint_freq={a.checkpoint_freq}",
        f"q_steps={a.q_steps}",
        f"lr={a.lr}",
        f"arch={a.arch}",
    ]
    cli(
        "sweep",
        "--dataset",
        "rotated-mnist",
        "--methods",
        f"{ERM},{QT},{W8}",
        "--test-envs",
        a.test_envs,
        "--seeds",
        a.seeds,
        "--jobs",
        a.jobs,
        "--ensembles",
        "eoq",
        *[x for s in sets for x in ("--set", s)],
        "--out",
        str(out),
    )
    cli("report", str(out))
    rows = {r["label"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    erm, erm_swad, qt, w8 = avg(rows, f"{ERM} w/o SWAD"), avg(rows, ERM), avg(rows, QT), avg(rows, W8)
    eoq = next((avg(rows, k) for k in rows if k.startswith(QT) and "eoq" in k.lower()), None)
    result = {
        "settings": vars(a),
        "avg_held_out_acc": {k: avg(rows, k) for k in rows},
        "rows": {
            "ERM_ViT": erm,
            "ERM_ViT + SWAD": erm_swad,
            "ERM_ViT + QT-DoG W7 + SWAD": qt,
            "QT-DoG W8A8 trt + SWAD": w8,
            "EoQ(3)": eoq,
        },
        "targets": {
            "qtdog_w7_within_1.0_of_erm_swad": check(qt, None if erm_swad is None else erm_swad - 1, ">="),
            "qtdog_w7_above_erm": check(qt, erm, ">"),
            "w8a8_within_1.5_of_erm_swad": check(w8, None if erm_swad is None else erm_swad - 1.5, ">="),
        },
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

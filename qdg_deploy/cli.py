"""`qdg-deploy`: a thin typer layer; every verb calls a plain Python function of the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import QdgError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Quantization-aware domain generalization: train → calibrate → export → bench.")
console = Console(stderr=True)
out = Console()


@app.command()
def train(
    method: str = typer.Option("erm", help="Algorithm: erm, qtdog (QT-DoG: LSQ quantization after --q-steps)."),
    dataset: str = typer.Option("rotated-mnist", help="rotated-mnist (embedded), PACS, VLCS, OfficeHome, "
                                "TerraIncognita, DomainNet, office31, digits, or folder:PATH."),
    data_dir: Optional[str] = typer.Option(None, help="Root holding the DomainBed folders (PACS/, office_home/, ...)."),
    test_env: str = typer.Option("0", help="Held-out domain: a name, an index, or 'all' for every one in turn."),
    arch: Optional[str] = typer.Option(None, help="mnist-cnn, resnet18, resnet50 (default by data set)."),
    weights: Optional[str] = typer.Option(None, help="Local pretrained state dict (.safetensors or .pt); never downloaded."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default by data set)."),
    q_steps: Optional[int] = typer.Option(None, help="QT-DoG: float steps before the network is quantized."),
    scheme: str = typer.Option("paper", help="Quantization scheme: paper (W7 weight-only), trt (W8A8 int8), ort (W8A8 uint8 act)."),
    bits: Optional[int] = typer.Option(None, help="Weight bits 2..8 (overrides the scheme)."),
    act_bits: Optional[int] = typer.Option(None, help="Activation bits 2..8; 0 keeps activations float."),
    quantizer: Optional[str] = typer.Option(None, help="Quantizer: lsq (default)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size per training domain."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate."),
    weight_decay: Optional[float] = typer.Option(None),
    checkpoint_freq: Optional[int] = typer.Option(None, help="Evaluate (and maybe select) every N steps."),
    image_size: Optional[int] = typer.Option(None, help="Input size for folder data sets (default 224)."),
    freeze_bn: Optional[bool] = typer.Option(None, "--freeze-bn/--no-freeze-bn", help="Keep BatchNorm statistics frozen."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: all cores)."),
    seed: int = typer.Option(0),
    out_dir: Path = typer.Option(Path("runs/train"), "--out", help="Run directory to write."),
    overwrite: bool = typer.Option(False, help="Replace a run already in --out."),
):
    """Train leave-one-domain-out; select by training-domain validation; write config/model/metrics."""
    from .train import resolve_hparams
    from .train import train as run_train
    from .report import per_domain_table, runs_table

    hp = resolve_hparams(dataset, method=method, data_dir=data_dir, test_env=test_env, arch=arch, weights=weights,
                         steps=steps, q_steps=q_steps, scheme=scheme, bits=bits, act_bits=act_bits,
                         quantizer=quantizer, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         checkpoint_freq=checkpoint_freq, image_size=image_size, freeze_bn=freeze_bn,
                         threads=threads, seed=seed)
    result = run_train(hp, out_dir, console=console, overwrite=overwrite)
    runs = result["runs"]
    if len(runs) == 1:
        (metrics,) = runs.values()
        out.print(per_domain_table({method: metrics}))
        out.print(f"run written to {out_dir}")
    else:
        out.print(runs_table(method, runs))
        out.print(f"runs written under {out_dir}")


@app.command("eval")
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory written by `train`."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Where to write the JSON (default RUN_DIR/eval.json)."),
):
    """Per-domain accuracy of a trained run (in/out splits, held-out domain marked)."""
    from .report import per_domain_table
    from .evaluate_run import evaluate_run

    result = evaluate_run(run_dir, json_path)
    out.print(per_domain_table({result["method"]: result}))
    out.print(f"written {json_path or run_dir / 'eval.json'}")


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="Where the demo's runs go (replaced)."),
    steps: Optional[int] = typer.Option(None, help="Training steps per model (default: rotated-mnist default)."),
    seed: int = typer.Option(0),
    test_env: str = typer.Option("75", help="Held-out rotation."),
):
    """The whole story on the embedded rotated-MNIST: ERM, QT-DoG, QT-DoG W8A8, side by side."""
    from .demo import run_demo

    run_demo(out_dir, steps=steps, seed=seed, test_env=test_env, console=console, out=out)


def main() -> None:
    try:
        app()
    except QdgError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()

"""Per-layer sensitivity: quantize one layer at a time (its weights and its input; every other layer float) and
measure the accuracy it costs on the training domains' `out` splits (never the held-out domain)."""

from __future__ import annotations

from torch import nn
from torch.utils.data import Dataset

from ..accuracy import accuracy
from ..quant import quant_layers
from .core import float_pass


def val_accuracy(model: nn.Module, sets: list[Dataset]) -> float:
    return sum(accuracy(model, s) for s in sets) / len(sets)


def layer_sensitivity(model: nn.Module, sets: list[Dataset], progress=None) -> dict:
    """{float_acc, quantized_acc, layers: [{layer, acc, drop}] most sensitive first} for a calibrated or trained
    quantized model; `sets` are the validation sets (training domains' `out` splits)."""
    layers = quant_layers(model)
    task = (
        progress.add_task("sensitivity", total=len(layers) + 1, info="one layer quantized at a time")
        if progress is not None
        else None
    )
    with float_pass(model):
        float_acc = val_accuracy(model, sets)
    progress is not None and progress.advance(task)
    rows = []
    for name, layer in layers.items():
        active = [q for q in (layer.weight_quant, layer.act_quant) if q is not None]
        with float_pass(model, active=active):
            acc = val_accuracy(model, sets)
        rows.append({"layer": name, "kind": type(layer).__name__[1:].lower(), "acc": acc, "drop": float_acc - acc})
        progress is not None and progress.advance(task)
    rows.sort(key=lambda r: -r["drop"])
    return {"float_acc": float_acc, "quantized_acc": val_accuracy(model.eval(), sets), "layers": rows}


def most_sensitive(report: dict, k: int) -> tuple[str, ...]:
    return tuple(r["layer"] for r in report["layers"][:k])


def plot_sensitivity(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["layers"]
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(rows) + 1.2))
    ax.barh([r["layer"] for r in rows][::-1], [100 * r["drop"] for r in rows][::-1], color="tab:red")
    ax.set_xlabel("validation accuracy drop (points) with only this layer quantized")
    ax.set_title(
        f"Layer sensitivity (float val {100 * report['float_acc']:.1f} %, "
        f"all quantized {100 * report['quantized_acc']:.1f} %)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)

"""Rich tables shared by train, eval and demo."""

from __future__ import annotations

from rich.table import Table


def pct(x: float | None) -> str:
    return "—" if x is None or x != x else f"{100 * x:.1f}"


def per_domain_table(results: dict[str, dict], sizes: dict[str, dict] | None = None, title: str | None = None) -> Table:
    """Rows: domains (held-out marked); columns: one per result. Training domains show their `out`
    (validation) accuracy, the held-out domain its accuracy over the whole domain."""
    first = next(iter(results.values()))
    test_env = first["test_env"]
    table = Table(title=title or f"Accuracy (%) per domain — held-out domain: {test_env}")
    table.add_column("domain")
    for label in results:
        table.add_column(label, justify="right")
    for d in first["per_domain"]:
        held = d == test_env
        cells = [pct(r["test_acc"] if held else r["per_domain"][d]["out_acc"]) for r in results.values()]
        table.add_row(f"[bold]{d} (held-out)[/]" if held else f"{d} (val)", *cells, end_section=held)
    table.add_row("val (mean of out)", *[pct(r["val_acc"]) for r in results.values()])
    if sizes:
        table.add_row("size", *[human_bytes(sizes[k]["packed_bytes"]) for k in results])
        table.add_row("× FP32", *[f"{sizes[k]['packed_bytes'] / sizes[k]['fp32_bytes']:.2f}×" for k in results])
    return table


def models_table(results: dict[str, dict], title: str | None = None) -> Table:
    """One row per model (fits 80 columns however many models): held-out accuracy and validation accuracy."""
    table = Table(title=title)
    table.add_column("model")
    table.add_column("held-out %", justify="right")
    table.add_column("val % (mean of out)", justify="right")
    for label, r in results.items():
        table.add_row(label, pct(r["test_acc"]), pct(r["val_acc"]))
    return table


def with_unaveraged(results: dict[str, dict]) -> dict[str, dict]:
    """Each result, preceded by its run's figures without weight averaging where the run kept them (`no_swad` /
    `no_sma`), labelled "LABEL w/o SWAD" / "LABEL w/o SMA"."""
    out = {}
    for label, r in results.items():
        for kind in ("swad", "sma"):
            plain = r.get(f"no_{kind}")
            if plain:
                out[f"{label} w/o {kind.upper()}"] = {**plain, "test_env": r["test_env"]}
        out[label] = r
    return out


def runs_table(method: str, runs: dict[str, dict]) -> Table:
    """QT-DoG README shape: one column per held-out domain, then the average."""
    table = Table(title="Held-out domain accuracy (%)")
    table.add_column("algorithm")
    for d in runs:
        table.add_column(d, justify="right")
    table.add_column("Avg", justify="right")
    accs = [m["test_acc"] for m in runs.values()]
    table.add_row(method, *[pct(a) for a in accs], pct(sum(accs) / len(accs)))
    return table


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"

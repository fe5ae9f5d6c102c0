"""Rich tables shared by train, eval, bench and demo."""

from __future__ import annotations

import textwrap

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text


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


def models_table(results: dict[str, dict], title: str | None = None) -> FitTable:
    """One row per model (fits 80 columns however many models): held-out accuracy and validation accuracy."""
    table = FitTable(title, [("model", "left"), ("held-out %", "right"), ("val % (mean of out)", "right")])
    for label, r in results.items():
        table.add_row(label, pct(r["test_acc"]), pct(r["val_acc"]))
    return table


AVERAGING_KINDS = ("swad", "sma")


def unaveraged(label: str, metrics: dict) -> list[tuple[str, str, dict]]:
    """The one way to show a run without its weight averaging: (row label "LABEL w/o SWAD" / "LABEL w/o SMA",
    metrics key "no_swad" / "no_sma", those figures) for each such result the run's metrics.json kept."""
    return [
        (f"{label} w/o {kind.upper()}", f"no_{kind}", metrics[f"no_{kind}"])
        for kind in AVERAGING_KINDS
        if metrics.get(f"no_{kind}")
    ]


def with_unaveraged(results: dict[str, dict]) -> dict[str, dict]:
    """Each result, preceded by its run's figures without weight averaging where the run kept them (`unaveraged`)."""
    out = {}
    for label, r in results.items():
        for row, _, plain in unaveraged(label, r):
            out[row] = {**plain, "test_env": r["test_env"]}
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


class FitTable:
    """A table that stays legible however narrow the terminal: when its columns do not fit the width it is drawn
    as several tables one under the other, each repeating the `keys` first columns (what a row is) with as many
    of the other columns as fit. No cell is cut short or wrapped, so every figure appears whole.

        t = FitTable("Latency", [("runtime", "left"), ("batch", "right"), ("mean ms", "right"), ...], keys=2)
        t.add_row("ort-cpu", "1", "0.412", ...)
        console.print(t)
    """

    def __init__(self, title: str | None, columns: list[tuple[str, str]], keys: int = 1):
        self.title, self.columns, self.keys = title, columns, keys
        self.rows: list[tuple[list[str], bool]] = []

    def add_row(self, *cells: str, end_section: bool = False) -> None:
        self.rows.append((list(cells), end_section))

    def headers(self, wrap: bool) -> list[str]:
        """The column headers; wrap=True breaks each at spaces to its column's cells' width (never inside a word)."""
        if not wrap:
            return [h for h, _ in self.columns]
        out = []
        for i, (h, _) in enumerate(self.columns):
            width = max([_cells(c[i]) for c, _ in self.rows] + [_cells(word) for word in h.split()], default=1)
            lines = [textwrap.wrap(line, width, break_on_hyphens=False) or [""] for line in h.split("\n")]
            out.append("\n".join(part for parts in lines for part in parts))
        return out

    def parts(self, width: int, headers: list[str]) -> list[list[int]]:
        """Column indices of each stacked table: the keys, then the next value columns that fit in `width`
        (a heavy-head box: 3 cells per column, padding and rule, plus the closing rule)."""
        widths = [max([_cells(h)] + [_cells(c[i]) for c, _ in self.rows]) for i, h in enumerate(headers)]
        keys = list(range(self.keys))
        base = 1 + sum(widths[i] + 3 for i in keys)
        parts, cur, used = [], list(keys), base
        for i in range(self.keys, len(self.columns)):
            if len(cur) > self.keys and used + widths[i] + 3 > width:
                parts.append(cur)
                cur, used = list(keys), base
            cur.append(i)
            used += widths[i] + 3
        return parts + [cur] if len(cur) > self.keys or not parts else parts

    def table(self, cols: list[int], headers: list[str], title: str | None) -> Table:
        t = Table(title=title)
        for i in cols:
            t.add_column(headers[i], justify=self.columns[i][1], no_wrap=True, overflow="fold")
        for cells, end in self.rows:
            t.add_row(*[cells[i] for i in cols], end_section=end)
        return t

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        headers = self.headers(wrap=False)
        parts = self.parts(options.max_width, headers)
        if len(parts) > 1:  # too wide: headers over several lines where that saves tables
            headers = self.headers(wrap=True)
            parts = self.parts(options.max_width, headers)
        for k, cols in enumerate(parts):
            title = self.title if len(parts) == 1 or not self.title else f"{self.title} ({k + 1}/{len(parts)})"
            yield self.table(cols, headers, title)


def _cells(s: str) -> int:
    """Terminal cells of the widest line of `s` (rich markup not counted)."""
    return max(Text.from_markup(line).cell_len for line in s.split("\n"))

"""`qdg-deploy report SWEEP_DIR`: DomainBed collect_results-style table of a sweep.

One row per method label (plus "<label> w/o SWAD" / "w/o SMA" where the runs' metrics.json hold such a result, and one
row per ensemble label), one column per held-out domain (per "source→target" pair for domain-adaptation runs,
whose target is the held-out domain) with the mean ± standard error over seeds of the held-out accuracy, the
Avg of those per-domain means (only when the row has every domain), and size ×FP32: packed bytes over the float32 bytes of ONE member network (config["size"]; an ensemble of K members counts K
members' packed bytes, as QT-DoG's README counts EoQ at 1×).

Standard error: sample standard deviation (ddof=1) / sqrt(n); none for a single value. (DomainBed's
collect_results divides the population deviation, ddof=0, by sqrt(n): smaller by sqrt((n-1)/n).)
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import QdgError
from ..io import atomic_path, read_json, write_json
from ..records import Metrics, RunConfig
from ..runs import CONFIG, METRICS, run_state
from ..tables import unaveraged
from .sweep import SWEEP_FILE

ENS_SUFFIX = "+ens"


def mean_se(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var) / math.sqrt(n)


def _runs(label_dir: Path, ensemble: bool) -> list[Path]:
    found = []
    for te in sorted(p for p in label_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cands = [te] if ensemble else sorted(p for p in te.glob("seed*") if p.is_dir())
        found += [p for p in cands if run_state(p) == "done"]
    return found


class _Row:
    def __init__(self, label: str, kind: str):
        self.label, self.kind, self.values, self.size, self.runs = label, kind, {}, None, []

    def add(self, test_env: str, acc: float, config: dict, run: Path) -> None:
        self.values.setdefault(test_env, []).append(acc)
        self.runs.append(str(run))
        size = config.get("size") or {}
        if self.size is None and size.get("fp32_bytes"):
            k = (config.get("ensemble") or {}).get("k", 1)
            self.size = size["packed_bytes"] / (size["fp32_bytes"] / k)


def collect(root: str | Path) -> dict:
    """The sweep's table as JSON: domains (column order), rows with per-domain mean/se/n/values, avg, size."""
    root = Path(root)
    if not root.is_dir():
        raise QdgError(f"{root} is not a sweep directory")
    info = read_json(root / SWEEP_FILE) if (root / SWEEP_FILE).is_file() else {}
    labels, order = info.get("labels", {}), info.get("methods", [])
    dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: _rank(p.name, labels, order),
    )
    rows: dict[str, _Row] = {}
    domains: list[str] = []
    for d in dirs:
        ens = d.name.endswith(ENS_SUFFIX)
        base = d.name[: -len(ENS_SUFFIX)] if ens else d.name
        text = labels.get(base, base)
        for run in _runs(d, ens):
            m, cfg = Metrics.read(run / METRICS).to_json(), RunConfig.read(run / CONFIG).to_json()
            domains = domains or list(cfg.get("domains", []))
            label = f"{m.get('method')} · {text}" if ens else text
            col = column(m, cfg)
            for row, key, plain in [] if ens else unaveraged(text, m):
                rows.setdefault(row, _Row(row, key)).add(col, plain["test_acc"], cfg, run)
            rows.setdefault(label, _Row(label, "ensemble" if ens else "runs")).add(col, m["test_acc"], cfg, run)
    if not rows:
        raise QdgError(f"{root}: no finished run (OUT/<label>/<test_env>/seed<k>/metrics.json) to report")
    seen = {te for r in rows.values() for te in r.values}
    rank = {d: i for i, d in enumerate(domains)}
    columns = sorted(seen, key=lambda c: (rank.get(c.split(PAIR)[-1], len(rank)), c))  # by (target) domain
    return {
        "sweep": str(root),
        "dataset": info.get("dataset"),
        "domains": columns,
        "rows": [_row_json(r, columns) for r in rows.values()],
        "se": "sample standard deviation (ddof=1) / sqrt(n) over seeds",
        "size_note": "packed bytes / float32 bytes of one member network",
    }


PAIR = "→"


def column(metrics: dict, config: dict) -> str:
    """A run's column: its held-out domain, or "source→target" for a domain-adaptation run."""
    da = config.get("domain_adaptation")
    return f"{da['source']}{PAIR}{da['target']}" if da else metrics["test_env"]


def _rank(name: str, labels: dict, order: list[str]):
    base = name[: -len(ENS_SUFFIX)] if name.endswith(ENS_SUFFIX) else name
    text = labels.get(base, base)
    return (order.index(text) if text in order else len(order), text, name.endswith(ENS_SUFFIX))


def _row_json(r: _Row, columns: list[str]) -> dict:
    cells = {}
    for te in columns:
        if te in r.values:
            mean, se = mean_se(r.values[te])
            cells[te] = {"mean": mean, "se": se, "n": len(r.values[te]), "values": r.values[te]}
    avg = sum(c["mean"] for c in cells.values()) / len(cells) if len(cells) == len(columns) else None
    return {"label": r.label, "kind": r.kind, "per_domain": cells, "avg": avg, "size_x_fp32": r.size, "runs": r.runs}


def _cell(c: dict | None) -> str:
    if c is None:
        return "—"
    return f"{100 * c['mean']:.1f}" + (f" ± {100 * c['se']:.1f}" if c["se"] is not None else "")


def cells(table: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of text cells (for Markdown and the terminal)."""
    header = ["Algorithm", *table["domains"], "Avg", "size ×FP32"]
    rows = [
        [
            r["label"],
            *[_cell(r["per_domain"].get(d)) for d in table["domains"]],
            "—" if r["avg"] is None else f"{100 * r['avg']:.1f}",
            "—" if r["size_x_fp32"] is None else f"{r['size_x_fp32']:.2f}×",
        ]
        for r in table["rows"]
    ]
    return header, rows


def markdown(table: dict) -> str:
    header, rows = cells(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    what = "Target-domain" if any(PAIR in d for d in table["domains"]) else "Held-out domain"
    note = (
        f"{what} accuracy (%), mean ± standard error over seeds ({table['se']}); Avg: mean of the "
        f"per-domain means; size: {table['size_note']}."
    )
    return "\n".join([f"# {table.get('dataset') or 'sweep'}: {table['sweep']}", "", *lines, "", note, ""])


def write_report(root: str | Path, out: str | Path | None = None) -> tuple[dict, Path, Path]:
    """Collect the sweep, write OUT (Markdown, default SWEEP/results.md) and OUT's .json; returns (table, md, json)."""
    table = collect(root)
    md = Path(out) if out else Path(root) / "results.md"
    js = md.with_suffix(".json")
    with atomic_path(md) as tmp:
        tmp.write_text(markdown(table))
    write_json(js, table)
    return table, md, js

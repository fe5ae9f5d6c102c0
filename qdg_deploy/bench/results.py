"""Reading a bench result: rich tables, `--compare` ratios, PNG plots."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.table import Table

from ..errors import QdgError
from ..io import atomic_path, read_json
from ..tables import FitTable, human_bytes, pct
from .core import SCHEMA
from .record import BenchRecord


def _short(label: str) -> str:
    p = Path(label)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def runtimes_table(rows: list[dict]) -> Table:
    t = Table(title="Runtimes on this machine")
    t.add_column("runtime")
    t.add_column("available")
    t.add_column("details / why not")
    for r in rows:
        t.add_row(r["name"], "[green]yes[/]" if r["available"] else "[red]no[/]", r["reason"])
    return t


def jetson_note(j: dict | None) -> str:
    """'; Jetson AGX Orin, nvpmodel MAXN (0), jetson_clocks on' (what was readable), or ''."""
    if not j:
        return ""
    clocks = {True: "jetson_clocks on", False: "jetson_clocks off", None: None}[j.get("jetson_clocks")]
    parts = [j.get("board"), f"nvpmodel {j['nvpmodel_mode']}" if j.get("nvpmodel_mode") else None, clocks]
    return "; " + ", ".join(p for p in parts if p) if any(parts) else ""


def results_table(result: dict, title: str | None = None) -> Group:
    """Two tables (each stacked further where the terminal is narrow, tables.FitTable): latency and throughput, a
    row per (artifact, runtime, batch); size and accuracy, a row per (artifact, runtime)."""
    env = result["environment"]
    copies = sorted({r["copies"] for r in result["records"]})
    one_copies = len(copies) == 1
    lat = FitTable(
        title
        or f"Latency per batch — {env['cpu']}"
        + (f", {env['gpu']}" if env.get("gpu") else "")
        + f", {result['settings']['threads'] or env['torch_threads']} threads"
        + (f"; host↔device copies: {copies[0]}" if one_copies else "")
        + jetson_note(env.get("jetson")),
        [
            ("artifact", "left"),
            ("runtime", "left"),
            ("batch", "right"),
            ("mean ms", "right"),
            ("p50", "right"),
            ("p99", "right"),
            ("img/s", "right"),
        ]
        + ([] if one_copies else [("copies", "left")]),
        keys=3,
    )
    sizes = FitTable(
        "Size and accuracy (%): held-out domain, validation",
        [
            ("artifact", "left"),
            ("runtime", "left"),
            ("file", "right"),
            ("packed", "right"),
            ("params", "right"),
            ("held-out %", "right"),
            ("val %", "right"),
        ],
        keys=2,
    )
    recs = result["records"]
    for i, r in enumerate(recs):
        lat_ms, size, acc = r["latency_ms"], r["size"], r.get("accuracy")
        key = (r["artifact"], r["runtime"])
        first = i == 0 or key != (recs[i - 1]["artifact"], recs[i - 1]["runtime"])
        last = i == len(recs) - 1 or key != (recs[i + 1]["artifact"], recs[i + 1]["runtime"])
        lat.add_row(
            _short(r["artifact"]) if first else "",
            r["runtime"] if first else "",
            str(r["batch"]),
            _ms(lat_ms["mean"]),
            _ms(lat_ms["p50"]),
            _ms(lat_ms["p99"]),
            f"{r['throughput_ips']:.0f}",
            *([] if one_copies else [r["copies"]]),
            end_section=last,
        )
        if first:
            sizes.add_row(
                _short(r["artifact"]),
                r["runtime"],
                human_bytes(size["file_bytes"]),
                "—" if size.get("packed_bytes") is None else human_bytes(size["packed_bytes"]),
                "—" if size.get("params") is None else _count(size["params"]),
                pct(acc["test_acc"]) if acc else "—",
                pct(acc["val_acc"]) if acc else "—",
            )
    return Group(lat, sizes)


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else (f"{n / 1e3:.0f}k" if n >= 1e4 else str(n))


def accuracy_table(result: dict) -> FitTable | None:
    """Rows: domains (held-out marked); columns: each (artifact, runtime) with accuracy."""
    cols = {}
    for r in result["records"]:
        if r.get("accuracy"):
            cols.setdefault(f"{_short(r['artifact'])}\n{r['runtime']}", r["accuracy"])
    for s in result.get("skipped", []):
        if s.get("accuracy"):
            cols.setdefault(f"{_short(s['artifact'])}\n{s['runtime']}", s["accuracy"])
    if not cols:
        return None
    first = next(iter(cols.values()))
    t = FitTable(
        f"Accuracy (%) per domain of {first['dataset']} — training domains: validation split; "
        f"held-out domain: all of it",
        [("domain", "left")] + [(c, "right") for c in cols],
    )
    for d, info in first["per_domain"].items():
        label = f"[bold]{d} (held-out)[/]" if info["held_out"] else f"{d} (val)"
        t.add_row(label, *[pct(a["per_domain"].get(d, {}).get("acc")) for a in cols.values()])
    return t


def skipped_lines(result: dict) -> list[str]:
    out = []
    for s in result.get("skipped", []):
        where = " · ".join(
            str(x)
            for x in (
                s.get("artifact") and _short(s["artifact"]),
                s["runtime"],
                s.get("batch") and f"batch {s['batch']}",
            )
            if x
        )
        out.append(f"skipped {where}: {s['reason']}")
    seen = set()
    for r in result.get("records", []):
        why = r.get("accuracy_skipped")
        key = (r["artifact"], r["runtime"])
        if why and why != "--no-accuracy" and key not in seen:
            seen.add(key)
            out.append(f"accuracy of {_short(r['artifact'])} · {r['runtime']}: {why}")
    return out


# ---------------------------------------------------------------- compare


def load_result(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise QdgError(f"--compare: {p} not found")
    try:
        data = read_json(p)
    except ValueError as e:
        raise QdgError(f"--compare: {p} is not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise QdgError(f"--compare: {p} is not a `qdg-deploy bench --json` file ({SCHEMA})")
    records = data.get("records")
    if not isinstance(records, list):
        raise QdgError(f"--compare: {p} has no list of records: write it again with `qdg-deploy bench --json`")
    for i, r in enumerate(records):
        if (why := _record_problem(r)) is not None:
            raise QdgError(f"--compare: {p} record {i}: {why}; write it again with `qdg-deploy bench --json`")
    return data


_record_problem = BenchRecord.problem


def compare(new: dict, old: dict) -> list[dict]:
    """Ratios new / old per (artifact, runtime, batch) found in both. Artifacts match by path, then by
    file/dir name; when each side holds a single artifact they match whatever their names (so an INT8
    file can be compared with an FP32 one)."""

    def index(res, keyf):
        return {(keyf(r["artifact"]), r["runtime"], r["batch"]): r for r in res["records"]}

    single = len({r["artifact"] for r in new["records"]}) == 1 and len({r["artifact"] for r in old["records"]}) == 1
    keyfs = [lambda a: a, lambda a: Path(a).name] + ([lambda a: "*"] if single else [])
    rows = []
    for keyf in keyfs:
        o, n = index(old, keyf), index(new, keyf)
        common = [k for k in n if k in o]
        if common:
            for k in common:
                a, b = n[k], o[k]
                acc_a, acc_b = a.get("accuracy"), b.get("accuracy")
                rows.append(
                    {
                        "artifact": a["artifact"],
                        "old_artifact": b["artifact"],
                        "runtime": k[1],
                        "batch": k[2],
                        "mean_ratio": a["latency_ms"]["mean"] / b["latency_ms"]["mean"],
                        "p99_ratio": a["latency_ms"]["p99"] / b["latency_ms"]["p99"],
                        "throughput_ratio": a["throughput_ips"] / b["throughput_ips"],
                        "file_ratio": a["size"]["file_bytes"] / b["size"]["file_bytes"],
                        "packed_ratio": (
                            a["size"]["packed_bytes"] / b["size"]["packed_bytes"]
                            if a["size"].get("packed_bytes") and b["size"].get("packed_bytes")
                            else None
                        ),
                        "test_acc_delta": (acc_a["test_acc"] - acc_b["test_acc"] if acc_a and acc_b else None),
                    }
                )
            break
    return rows


def compare_table(rows: list[dict], old_path: str) -> FitTable:
    t = FitTable(
        f"New / old ({old_path}); latency < 1 and throughput > 1 mean faster",
        [
            (col, "left" if col in ("artifact", "runtime", "vs") else "right")
            for col in (
                "artifact",
                "runtime",
                "batch",
                "vs",
                "mean lat ×",
                "p99 lat ×",
                "throughput ×",
                "file ×",
                "packed ×",
                "held-out Δ pts",
            )
        ],
        keys=3,
    )
    for r in rows:
        t.add_row(
            _short(r["artifact"]),
            r["runtime"],
            str(r["batch"]),
            _short(r["old_artifact"]),
            f"{r['mean_ratio']:.3f}",
            f"{r['p99_ratio']:.3f}",
            f"{r['throughput_ratio']:.3f}",
            f"{r['file_ratio']:.3f}",
            "—" if r["packed_ratio"] is None else f"{r['packed_ratio']:.3f}",
            "—" if r["test_acc_delta"] is None else f"{100 * r['test_acc_delta']:+.1f}",
        )
    return t


# ---------------------------------------------------------------- plots


def plot_paths(path: str | Path) -> tuple[Path, Path]:
    """`--plot out.png` → out-latency.png, out-accuracy.png; `--plot DIR` → DIR/latency.png, DIR/accuracy.png."""
    p = Path(path)
    if p.suffix.lower() == ".png":
        return p.with_name(f"{p.stem}-latency.png"), p.with_name(f"{p.stem}-accuracy.png")
    return p / "latency.png", p / "accuracy.png"


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def write_plots(result: dict, path: str | Path) -> list[Path]:
    """Latency (and throughput) vs batch, one line per (artifact, runtime); per-domain accuracy bars per
    artifact, one bar per runtime, the held-out domain hatched. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat_path, acc_path = plot_paths(path)
    written = []
    series: dict[tuple, list] = {}
    for r in result["records"]:
        series.setdefault((_short(r["artifact"]), r["runtime"]), []).append(r)
    if series:
        _latency_plot(plt, result, series, lat_path)
        written.append(lat_path)
    by_art: dict[str, dict[str, dict]] = {}
    for r in result["records"]:
        if r.get("accuracy"):
            by_art.setdefault(_short(r["artifact"]), {}).setdefault(r["runtime"], r["accuracy"])
    if by_art:
        _accuracy_plot(plt, by_art, acc_path)
        written.append(acc_path)
    return written


def _latency_plot(plt, result: dict, series: dict[tuple, list], path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    for (art, rt), recs in series.items():
        recs = sorted(recs, key=lambda r: r["batch"])
        b = [r["batch"] for r in recs]
        mean = [r["latency_ms"]["mean"] for r in recs]
        lo = [r["latency_ms"]["mean"] - r["latency_ms"]["p50"] for r in recs]
        hi = [r["latency_ms"]["p99"] - r["latency_ms"]["mean"] for r in recs]
        ax1.errorbar(
            b,
            mean,
            yerr=[[max(0, v) for v in lo], [max(0, v) for v in hi]],
            marker="o",
            capsize=3,
            label=f"{art} · {rt}",
        )
        ax2.plot(b, [r["throughput_ips"] for r in recs], marker="o", label=f"{art} · {rt}")
    bs = sorted({r["batch"] for r in result["records"]})
    for ax, ylabel, title in (
        (ax1, "latency per batch (ms): mean, bar p50–p99", "Latency vs batch"),
        (ax2, "throughput (images/s)", "Throughput vs batch"),
    ):
        _log_axes(ax, bs, ylabel, title)
    ax1.legend(fontsize=8)
    env = result["environment"]
    copies = ", ".join(sorted({r["copies"] for r in result["records"]}))
    fig.suptitle(
        f"{env['cpu']}"
        + (f" · {env['gpu']}" if env.get("gpu") else "")
        + f" · {result['settings']['threads'] or env['torch_threads']} threads"
        + f" · host↔device copies: {copies}",
        fontsize=9,
    )
    _save(fig, path)
    plt.close(fig)


def _log_axes(ax, batches: list[int], ylabel: str, title: str) -> None:
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(batches, [str(x) for x in batches])
    # Within one decade a log axis has no major tick at all: label 1..9 × 10^k there, 1-2-5 otherwise.
    lo_y, hi_y = ax.get_ylim()
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=range(1, 10) if hi_y / lo_y < 10 else (1, 2, 5)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def _accuracy_plot(plt, by_art: dict[str, dict[str, dict]], path: Path) -> None:
    fig, axes = plt.subplots(len(by_art), 1, figsize=(11, 3.4 * len(by_art)), squeeze=False, layout="constrained")
    for ax, (art, per_rt) in zip(axes[:, 0], by_art.items()):
        _accuracy_bars(ax, art, per_rt)
    _save(fig, path)
    plt.close(fig)


def _accuracy_bars(ax, art: str, per_rt: dict[str, dict]) -> None:
    import numpy as np
    from matplotlib.patches import Patch

    first = next(iter(per_rt.values()))
    domains = list(first["per_domain"])
    width = 0.8 / len(per_rt)
    xs = np.arange(len(domains))
    handles = []
    for j, (rt, acc) in enumerate(per_rt.items()):
        vals = [100 * acc["per_domain"][d]["acc"] for d in domains]
        color = f"C{j}"
        bars = ax.bar(xs + (j - (len(per_rt) - 1) / 2) * width, vals, width, color=color)
        handles.append(Patch(color=color, label=rt))
        for bar, d, v in zip(bars, domains, vals):
            if acc["per_domain"][d]["held_out"]:
                bar.set_hatch("//")
                bar.set_edgecolor("black")
            ax.annotate(f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, [f"{d}\n(held-out)" if first["per_domain"][d]["held_out"] else f"{d}\n(val)" for d in domains])
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{art}: accuracy per domain of {first['dataset']} (held-out hatched)")
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="held-out domain"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="y", alpha=0.3)

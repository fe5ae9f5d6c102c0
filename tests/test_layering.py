"""The import graph of qdg_deploy (read with ast, nothing imported) shows its layers.

Nodes are modules (a package is its __init__); an edge is any import of another qdg_deploy module, at the top of a
file or inside a function (function-level imports run too), except those under `if TYPE_CHECKING:` (never run).
`from pkg import name` counts as importing pkg.name when that is a module, else pkg.

Checked:
- no cycle between modules, and none between layers (a layer: a subpackage, or a top-level module);
- calibrate/ (the `calibrate` verb's package) imports nothing from train/;
- quant/, data/ and models/ import no other layer but the shared low modules (LOW), and LOW imports only LOW.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = "qdg_deploy"
ROOT = Path(__file__).resolve().parent.parent / PKG
# The shared low modules any layer may import: they import nothing of qdg_deploy but each other.
LOW = {"errors", "io", "device", "version", "records", "timing"}
BASE_LAYERS = ("quant", "data", "models")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                skip.update(id(n) for n in ast.walk(inner))
    return skip


def _targets(name: str, path: Path, node: ast.AST, mods: dict) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    return [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_nodes(tree)
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                for t in _targets(name, path, node, mods):
                    if t == PKG or t.startswith(PKG + "."):
                        while t not in mods:  # qdg_deploy.x.attr -> qdg_deploy.x
                            t = t.rpartition(".")[0]
                        if t != name:
                            edges.add(t)
        graph[name] = edges
    return graph


def layer(module: str) -> str:
    """qdg_deploy.quant.plan -> quant; qdg_deploy.runs -> runs; qdg_deploy -> the package's own __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PKG


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def layer_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        out.setdefault(layer(m), set()).update(layer(t) for t in targets if layer(t) != layer(m))
    return out


def test_the_scan_sees_the_package():
    graph = import_graph()
    assert {"qdg_deploy.cli", "qdg_deploy.quant.plan", "qdg_deploy.calibrate.run"} <= set(graph)
    assert "qdg_deploy.quant" in graph["qdg_deploy.runs"]  # a top-level import
    assert "qdg_deploy.models.ensemble" in graph["qdg_deploy.runs"]  # an import inside a function
    assert "qdg_deploy.quant.plan" not in graph["qdg_deploy.quant.layers"]  # only under TYPE_CHECKING


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    assert cycles(import_graph()) == []


def test_no_import_cycles_between_layers():
    assert cycles(layer_graph(import_graph())) == []


def test_calibration_does_not_import_train():
    bad = sorted(
        (m, t) for m, ts in import_graph().items() if layer(m) == "calibrate" for t in ts if layer(t) == "train"
    )
    assert bad == []


def test_base_layers_import_only_themselves_and_the_low_modules():
    graph = import_graph()
    bad = sorted(
        (m, t)
        for m, ts in graph.items()
        if layer(m) in BASE_LAYERS
        for t in ts
        if layer(t) != layer(m) and layer(t) not in LOW
    )
    assert bad == []
    low_bad = sorted((m, t) for m, ts in graph.items() if layer(m) in LOW for t in ts if layer(t) not in LOW)
    assert low_bad == []
    assert LOW <= set(layer_graph(graph))  # each low module exists


def test_every_package_folder_has_an_init():
    """setuptools' find_packages (pyproject's `include = ["qdg_deploy*"]`) skips a folder without __init__.py."""
    folders = {p.parent for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts}
    assert sorted(str(f) for f in folders if not (f / "__init__.py").is_file()) == []

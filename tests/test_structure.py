"""The package structure: imports go down the layers only, and no import cycle.

A cycle makes the import order matter and hides which module owns a concept; a lazy import
inside a function only hides the cycle from Python, so function-level imports count here too.
The graph is read from the source (``ast``), nothing is imported.

The layers, top to bottom (``docs/architecture.md``): the CLI; the trainable and the reports,
side by side; the driver; the worker; planning; the core (settings, data, methods, metrics,
tracking, storage, statistics). A module imports its own layer or the ones below, and the two
side-by-side packages never import each other: the CLI hands the trainable and the reports to
the driver (:class:`ablate.launch.job.Job`).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.paths import REPO

PACKAGES = ("ablate", "trainables", "dashboards")
#: Top to bottom; a layer's packages, most specific first within the whole list.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("ablate.cli",),
    ("dashboards", "trainables"),
    ("ablate.launch",),
    ("ablate.training",),
    ("ablate.planning",),
    ("ablate",),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The project modules one ``import`` / ``from ... import`` statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = module.split(".")
        anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
        base = ".".join([*anchor, base] if base else anchor)
    targets = []
    for alias in node.names:
        child = f"{base}.{alias.name}"
        if child in known:  # ``from ablate import metrics``: the submodule
            targets.append(child)
        elif base in known:
            targets.append(base)
    return targets


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, at any level (functions included)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[name] = {
            target
            for node in ast.walk(tree)
            for target in _imported(node, name, is_package, known)
            if target != name
        }
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), as sorted lists."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_graph_sees_lazy_and_relative_imports() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from ablate.data import format\n    from . import io\n")
    known = {"ablate.data.format", "ablate.data.io"}
    found = [t for n in ast.walk(tree) for t in _imported(n, "ablate.data.x", False, known)]
    assert found == ["ablate.data.format", "ablate.data.io"]


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert "ablate.data.format" in graph and graph["ablate.data.store"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _owner(module: str) -> tuple[int, str]:
    """The layer (0 = top) and the package of ``module`` in :data:`LAYERS`."""
    matches = [
        (len(package), depth, package)
        for depth, layer in enumerate(LAYERS)
        for package in layer
        if module == package or module.startswith(package + ".")
    ]
    _, depth, package = max(matches)
    return depth, package


def back_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a layer, or sideways between two packages of one layer."""
    found = []
    for module, targets in sorted(graph.items()):
        depth, package = _owner(module)
        for target in sorted(targets):
            target_depth, target_package = _owner(target)
            if target_depth < depth or (target_depth == depth and target_package != package):
                found.append(f"{module} -> {target}")
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph with every subpackage folded into one node (``ablate.launch.driver``
    -> ``ablate.launch``, ``dashboards.tables`` -> ``dashboards``); a top-level module of
    ``ablate`` (``ablate.config``) stays its own node."""

    def package(module: str) -> str:
        parts = module.split(".")
        if parts[0] != "ablate":
            return parts[0]
        return ".".join(parts[:2])

    folded: dict[str, set[str]] = {}
    for module, targets in graph.items():
        here = package(module)
        folded.setdefault(here, set()).update(package(t) for t in targets if package(t) != here)
    return folded


def test_layers_go_one_way() -> None:
    graph = import_graph()
    assert not back_imports(graph), "imports against the layers:\n" + "\n".join(back_imports(graph))


def test_a_back_import_is_caught() -> None:
    """The check is live: one upward import added to the real graph (the core importing the
    driver), one sideways (the reports importing the trainable), each found."""
    graph = import_graph()
    graph["ablate.config"] = graph["ablate.config"] | {"ablate.launch.driver"}
    graph["dashboards.tables"] = graph["dashboards.tables"] | {"trainables.ablation"}
    assert back_imports(graph) == [
        "ablate.config -> ablate.launch.driver",
        "dashboards.tables -> trainables.ablation",
    ]


def test_no_package_cycle() -> None:
    packages = package_graph(import_graph())
    assert {"ablate", "ablate.launch", "ablate.training", "ablate.planning"} <= set(packages)
    cycles = find_cycles(packages)
    assert not cycles, "package cycles: " + "; ".join(" <-> ".join(c) for c in cycles)

"""The layout's rules, checked from the source (every import, also those inside functions).

docs/architecture.md states them: no import cycle; ``config`` imports nothing from ``data/`` or
``models/``; ``inference/`` and ``evaluation/`` nothing from ``training/``; ``metrics/`` only
``labels`` and ``errors``; the library never streamlit; the dashboard never the CLI; no module
over 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def module_name(path: Path, top: Path) -> str:
    parts = list(path.relative_to(top.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(top: Path, known: set[str] | None = None) -> dict[str, set[str]]:
    """module -> the modules it imports (absolute names; a name imported from a package that
    is itself a module counts as that module), for every .py under ``top``."""
    files = sorted(top.rglob("*.py"))
    names = {module_name(p, top) for p in files} | (known or set())
    graph: dict[str, set[str]] = {}
    for path in files:
        name = module_name(path, top)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.add(sub if sub in names else source)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles among the graph's own modules (one path each), by depth-first search."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or nxt == node:
                continue
            if state.get(nxt) == "open":
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def rule_breaks(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks a rule of the layout, as "importer -> imported (rule)"."""
    lib = "ctseg_core"
    rules = [
        (f"{lib}.config", (f"{lib}.data", f"{lib}.models"), "config is plain dataclasses"),
        (f"{lib}.inference", (f"{lib}.training",), "inference never uses training"),
        (f"{lib}.evaluation", (f"{lib}.training",), "evaluation never uses training"),
        (lib, ("streamlit",), "the library never imports streamlit"),
        ("dashboard", (f"{lib}.cli",), "the dashboard never imports the CLI"),
    ]
    out = []
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            for where, forbidden, why in rules:
                if in_package(importer, where) and any(in_package(target, f) for f in forbidden):
                    out.append(f"{importer} -> {target} ({why})")
            allowed = (f"{lib}.metrics", f"{lib}.labels", f"{lib}.errors")
            if (
                in_package(importer, f"{lib}.metrics")
                and in_package(target, lib)
                and not any(in_package(target, a) for a in allowed)
            ):
                out.append(f"{importer} -> {target} (metrics import only labels and errors)")
    return out


def project_graph() -> dict[str, set[str]]:
    graph = import_graph(REPO / "ctseg_core")
    graph |= import_graph(REPO / "dashboard", known=set(graph))
    return graph


def test_the_library_has_no_import_cycle():
    graph = import_graph(REPO / "ctseg_core")
    assert len(graph) > 60  # every module was read
    assert cycles(graph) == []


def test_no_import_breaks_a_rule_of_the_layout():
    graph = project_graph()
    # the rules look at real imports: these must be seen for the check to mean anything
    assert "ctseg_core.labels" in graph["ctseg_core.metrics.overlap"]
    assert "ctseg_core.models.checkpoint" in graph["ctseg_core.inference.predictor"]
    assert rule_breaks(graph) == []


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(REPO)): n
        for top in ("ctseg_core", "dashboard")
        for p in (REPO / top).rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


@pytest.fixture
def broken_tree(tmp_path):
    """A small package that breaks each rule once, to show the checks can fail."""
    top = tmp_path / "ctseg_core"
    for folder in ("", "metrics", "training", "inference", "models"):
        (top / folder).mkdir(parents=True, exist_ok=True)
        (top / folder / "__init__.py").write_text("")
    (top / "config.py").write_text("def f():\n    from .models import unet\n")
    (top / "models" / "unet.py").write_text("from ..config import f\n")
    (top / "metrics" / "overlap.py").write_text("from ..training import losses\n")
    (top / "training" / "losses.py").write_text("import streamlit as st\n")
    (top / "inference" / "predictor.py").write_text("from ..training.losses import x\n")
    return top


def test_the_checks_find_a_cycle_and_each_forbidden_import(broken_tree):
    graph = import_graph(broken_tree)
    assert cycles(graph) == [["ctseg_core.config", "ctseg_core.models.unet", "ctseg_core.config"]]
    assert rule_breaks(graph) == [
        "ctseg_core.config -> ctseg_core.models.unet (config is plain dataclasses)",
        "ctseg_core.inference.predictor -> ctseg_core.training.losses "
        "(inference never uses training)",
        "ctseg_core.metrics.overlap -> ctseg_core.training.losses "
        "(metrics import only labels and errors)",
        "ctseg_core.training.losses -> streamlit (the library never imports streamlit)",
    ]

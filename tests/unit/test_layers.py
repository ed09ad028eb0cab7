"""The structure holds: layers import one way, no module imports another in
a circle, and a node kind is one module registered once.

The layers are import-linter contracts in pyproject.toml ([tool.importlinter]);
this runs them with the suite, so a change that breaks them fails here."""
from __future__ import annotations

import inspect
import subprocess
import sys
import typing
from pathlib import Path

import grimp

PROJECT = Path(__file__).resolve().parents[2]
ROOTS = ("apps", "cli", "deployments", "kuberay", "local_stack", "observability")


def test_the_import_linter_contracts_are_kept():
    """In its own process: import-linter reconfigures logging as it runs."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache", "--no-logo"], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.find_modules_directly_imported_by(module):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for module in sorted(graph.modules):
            if module not in index:
                visit(module)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_no_module_imports_another_in_a_circle(monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT))
    graph = grimp.build_graph(*ROOTS, cache_dir=None)
    assert len(graph.modules) > 50  # the whole project was read
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    assert _cycles(graph) == [["a", "b", "c"]]


def test_each_node_kind_is_one_module_registered_once():
    from deployments.graph.spec import GraphSpec
    from deployments.nodes import KINDS, Node, NodeSpec

    union = typing.get_args(typing.get_args(GraphSpec.model_fields["nodes"].annotation)[1])[0]
    assert set(typing.get_args(union)) == set(KINDS)
    names = [kind.model_fields["kind"].annotation.__args__[0] for kind in KINDS]
    assert len(set(names)) == len(names)
    for kind in KINDS:
        module = sys.modules[kind.__module__]
        assert issubclass(kind, NodeSpec) and kind.build is not NodeSpec.build, kind
        nodes = [c for _, c in inspect.getmembers(module, inspect.isclass) if issubclass(c, Node) and c.__module__ == module.__name__]
        assert nodes, f"{module.__name__} defines the spec {kind.__name__} but no Node"

"""Every third-party package the code imports is declared in pyproject.toml
(runtime code: `dependencies`; tests: also the `test` extra), not only
installed because something else pulls it in: what a transitive dependency
drops, the platform would lose without a word."""
from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import distributions, packages_distributions
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
OWN = {"apps", "bench", "cli", "deployments", "kuberay", "local_stack", "observability", "tests"}
RUNTIME = ["apps", "bench", "cli", "deployments", "kuberay", "local_stack", "observability"]
# Provided by the server that runs the code, not installable from PyPI.
PROVIDED = {"triton_python_backend_utils": "Triton's python backend, inside the server's stub process"}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\[=<>!~; ]", requirement.strip())[0]).lower()


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    return runtime, runtime | {_name(r) for r in project["optional-dependencies"]["test"]}


def imported(folders: list[str]) -> dict[str, str]:
    """Full module name -> a file importing it, for every absolute import."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((PROJECT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in OWN and top not in sys.stdlib_module_names and top not in PROVIDED:
                        found.setdefault(name, str(path.relative_to(PROJECT)))
    return found


@cache
def _top_level() -> dict[str, set[str]]:
    return {top: {_name(d) for d in dists} for top, dists in packages_distributions().items()}


def distributions_of(module: str) -> set[str]:
    """The distributions that may provide `module`. Most top-level packages
    come from one; a namespace package such as `opentelemetry` is split
    across several, and then the module's own file decides."""
    candidates = _top_level().get(module.split(".")[0], set())
    if len(candidates) <= 1:
        return candidates
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return candidates
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return candidates  # a namespace package's root: any of them
    origin = Path(spec.origin).resolve()
    owners = {name for name in candidates if _holds(name, origin)}
    return owners or candidates


@cache
def _files(name: str) -> frozenset[Path]:
    dist = next(d for d in distributions() if _name(d.metadata["Name"]) == name)
    return frozenset(Path(dist.locate_file(file)).resolve() for file in dist.files or ())


def _holds(name: str, file: Path) -> bool:
    return file in _files(name)


def undeclared(folders: list[str], allowed: set[str]) -> list[str]:
    problems = []
    for module, where in sorted(imported(folders).items()):
        owners = distributions_of(module)
        if not owners:
            problems.append(f"{module} ({where}): not installed")
        elif not owners & allowed:
            problems.append(f"{module} ({where}): from {' or '.join(sorted(owners))}, which pyproject.toml does not declare")
    return problems


def test_the_runtime_declares_what_it_imports():
    runtime, _ = declared()
    assert undeclared(RUNTIME, runtime) == []


def test_the_tests_declare_what_they_import():
    _, with_tests = declared()
    assert undeclared(["tests"], with_tests) == []


def test_an_undeclared_import_is_named():
    assert distributions_of("yaml") == {"pyyaml"}
    assert distributions_of("opentelemetry.sdk.trace") == {"opentelemetry-sdk"}
    assert any("pyyaml" in problem for problem in undeclared(["cli"], {"ray"}))

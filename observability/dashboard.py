"""A Grafana dashboard's queries and the structure Grafana relies on.

Grafana imports a dashboard with duplicate panel ids or a panel without
`gridPos` and then misplaces or drops panels; a panel bound to a fixed
datasource uid breaks in every other Grafana. So besides its queries
(panel targets and query variables, the places that name metrics) the
dashboard's structure is checked here: unique ids, `gridPos`, every panel
and target on the `${datasource}` variable, every `$variable` defined.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator

DATASOURCE_VARIABLE = "datasource"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_DATASOURCE_UIDS = {"${datasource}", "$datasource"}
_VARIABLE_USE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))|\[\[(\w+)\]\]")
# label_values(<selector>, <label>) / label_values(<label>) / query_result(<expr>)
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<expr>.*\S)\s*,\s*)?(?P<label>\w+)\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\(\s*(?P<expr>.*\S)\s*\)\s*$", re.S)


@dataclass(frozen=True)
class Query:
    """One PromQL expression of the dashboard, where it is, and labels it needs
    beyond its selectors' matchers (a `label_values` variable's label)."""

    where: str
    expr: str
    needs_labels: frozenset[str] = frozenset()


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return dashboard.get("templating", {}).get("list", [])


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else str(query)


def _where(panel: dict[str, Any]) -> str:
    return f"panel {panel.get('id')} {panel.get('title', '')!r}"


def queries(dashboard: dict[str, Any]) -> list[Query]:
    """The PromQL of every panel target and every query variable."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append(Query(f"{_where(panel)} target {target.get('refId')}", target["expr"]))
    for variable in _variables(dashboard):
        if variable.get("type") != "query":
            continue
        text, where = _variable_query(variable), f"variable ${variable.get('name')}"
        label_values, query_result = _LABEL_VALUES.match(text), _QUERY_RESULT.match(text)
        if label_values and label_values.group("expr"):
            found.append(Query(where, label_values.group("expr"), frozenset({label_values.group("label")})))
        elif query_result:
            found.append(Query(where, query_result.group("expr")))
        else:  # label_values(label) alone, metrics(...), label_names(): no metric to check
            found.append(Query(where, ""))
    return found


def rule_queries(rules: dict[str, Any]) -> list[Query]:
    """The PromQL of every alerting and recording rule of a Prometheus rules file."""
    return [Query(f"rule {rule.get('alert') or rule.get('record')} (group {group.get('name')})", str(rule.get("expr", "")))
            for group in rules.get("groups", []) for rule in group.get("rules", [])]


def _variable_names(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _VARIABLE_USE.finditer(text)}


def _is_datasource_variable(datasource: Any) -> bool:
    return isinstance(datasource, dict) and datasource.get("uid") in _DATASOURCE_UIDS and datasource.get("type") == "prometheus"


def structure_problems(dashboard: dict[str, Any]) -> list[str]:
    """What Grafana would import wrongly, or only on the Grafana it came from."""
    problems = [f"dashboard has no {key!r}" for key in ("uid", "title", "schemaVersion") if key not in dashboard]
    variables = {v.get("name"): v for v in _variables(dashboard)}
    source = variables.get(DATASOURCE_VARIABLE)
    if not source or source.get("type") != "datasource" or source.get("query") != "prometheus":
        problems.append(f"no variable ${DATASOURCE_VARIABLE} of type datasource (query: prometheus)")
    for name, variable in variables.items():
        if variable.get("type") == "query" and not _is_datasource_variable(variable.get("datasource")):
            problems.append(f"variable ${name}: datasource is not ${{{DATASOURCE_VARIABLE}}}")
    defined = set(variables)
    ids: dict[Any, str] = {}
    for panel in panels(dashboard):
        where = _where(panel)
        if not isinstance(panel.get("id"), int):
            problems.append(f"{where}: no integer id")
        elif panel["id"] in ids:
            problems.append(f"{where}: id {panel['id']} already used by {ids[panel['id']]}")
        else:
            ids[panel["id"]] = where
        grid = panel.get("gridPos")
        if not isinstance(grid, dict) or not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")):
            problems.append(f"{where}: no gridPos with integer h, w, x, y")
        elif grid["w"] <= 0 or grid["h"] <= 0 or grid["x"] < 0 or grid["x"] + grid["w"] > 24:
            problems.append(f"{where}: gridPos {grid} outside Grafana's 24 columns")
        if panel.get("type") == "row":
            continue
        if not _is_datasource_variable(panel.get("datasource")):
            problems.append(f"{where}: datasource is not ${{{DATASOURCE_VARIABLE}}}")
        if not panel.get("targets"):
            problems.append(f"{where}: no targets")
        refs = [t.get("refId") for t in panel.get("targets", [])]
        if len(set(refs)) != len(refs) or None in refs:
            problems.append(f"{where}: target refIds {refs} are not unique")
        for target in panel.get("targets", []):
            if "datasource" in target and not _is_datasource_variable(target["datasource"]):
                problems.append(f"{where} target {target.get('refId')}: datasource is not ${{{DATASOURCE_VARIABLE}}}")
    for query in queries(dashboard):
        # `$__rate_interval` is Grafana's, `$1` a label_replace group
        unknown = {n for n in _variable_names(query.expr) if not n.startswith("__") and not n.isdigit()} - defined
        if unknown:
            problems.append(f"{query.where}: undefined variables {sorted(unknown)}")
    return problems

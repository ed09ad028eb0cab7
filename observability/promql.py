"""The metric selectors of a PromQL expression, found by a real PromQL parser.

A dashboard query fails silently: a misspelt metric or label draws an empty
panel, not an error. To check the names, every selector of every query is
taken from the parse tree of `promql_parser` (a port of Prometheus' own
parser), so functions, aggregation modifiers (`by (le)`), label names and
string literals are never mistaken for metric names, and a query that is
not valid PromQL is reported as such.

Grafana's interval variables (`$__rate_interval`, ...) stand where PromQL
wants a duration or a number, so they are replaced by one before parsing;
dashboard variables belong inside label-matcher strings
(`application=~"$application"`), where PromQL takes them as text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import promql_parser

# Grafana's global variables that stand for a duration or a number, with a
# value of the right kind: only the syntax matters to the checker.
_GRAFANA_BUILTINS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__interval_ms": "60000",
    "__range_ms": "3600000",
    "__range_s": "3600",
}
_BUILTIN_RE = re.compile(r"\$(?:\{(__\w+)(?::\w+)?\}|(__\w+))")


class PromQLError(ValueError):
    """An expression that does not parse, or selects no metric by name."""


@dataclass(frozen=True)
class Selector:
    """One vector selector: the metric it names and the labels it matches on."""

    metric: str
    labels: frozenset[str]


def substitute_grafana_builtins(expr: str) -> str:
    """`rate(x[$__rate_interval])` -> `rate(x[5m])`; unknown `$__name`s stay (and fail to parse)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return _GRAFANA_BUILTINS.get(name, match.group(0))

    return _BUILTIN_RE.sub(value, expr)


def selectors(expr: str) -> list[Selector]:
    """Every vector selector of `expr`, in order of appearance.

    Raises PromQLError for an expression that does not parse, and for a
    selector without a literal metric name (`{__name__=~"ray_.*"}`): what it
    selects depends on the data, so it cannot be checked against a scrape.
    """
    try:
        tree = promql_parser.parse(substitute_grafana_builtins(expr))
    except ValueError as error:
        raise PromQLError(f"not valid PromQL: {error}") from None
    found: list[Selector] = []
    unnamed: list[str] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = list(node.matchers.matchers) + [m for group in node.matchers.or_matchers for m in group]
            name = node.name
            if name is None:
                literal = [m.value for m in matchers if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal]
                name = literal[0] if literal else None
            if name is None:
                unnamed.append(node.prettify())
            else:
                found.append(Selector(name, frozenset(m.name for m in matchers if m.name != "__name__")))
        return True

    promql_parser.walk(tree, visit)
    if unnamed:
        raise PromQLError(f"selector without a metric name: {', '.join(unnamed)}")
    return found

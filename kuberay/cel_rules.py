"""The CRDs' CEL rules (`x-kubernetes-validations`), evaluated as an API
server would, with the `common-expression-language` library.

Each rule is compiled once; a rule the library cannot compile is an error
at load time, never a rule silently skipped. A rule is evaluated with `self`
bound to the value at its schema node, wherever that value is present.
Transition rules (those using `oldSelf`) run only on an update, as in
Kubernetes: pass the previous object as `old`; without it (a create) they
are counted as skipped, and the report says how many.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator, Optional

import cel

from kuberay.problems import Problem, join

VALIDATIONS = "x-kubernetes-validations"


@dataclass
class CelReport:
    problems: list[Problem] = field(default_factory=list)
    evaluated: int = 0
    skipped_transition: int = 0


@lru_cache(maxsize=None)
def compiled(rule: str) -> Any:
    """Raises ValueError if the library cannot parse the rule."""
    return cel.compile(rule)


def is_transition_rule(rule: str) -> bool:
    return "oldSelf" in rule


def _list_key(schema: dict[str, Any], item: Any) -> Optional[tuple]:
    keys = schema.get("x-kubernetes-list-map-keys")
    if schema.get("x-kubernetes-list-type") != "map" or not keys or not isinstance(item, dict):
        return None
    return tuple(item.get(k) for k in keys)


def walk(schema: dict[str, Any], value: Any, path: str, old: Any = None) -> Iterator[tuple[dict[str, Any], Any, Any, str]]:
    """(schema node, value, old value or None, field path) for every value
    present in the object, following properties, map values and list items.
    Old values are correlated as Kubernetes does: by property name, map key,
    and for lists only by the keys of a `map` list."""
    yield schema, value, old, path
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            child_schema = properties.get(key) if properties else None
            if child_schema is None and isinstance(extra, dict):
                child_schema = extra
            if child_schema is not None:
                child_old = old.get(key) if isinstance(old, dict) else None
                yield from walk(child_schema, child, join(path, key), child_old)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        olds = {}
        if isinstance(old, list):
            olds = {_list_key(schema, item): item for item in old if _list_key(schema, item) is not None}
        for index, item in enumerate(value):
            key = _list_key(schema, item)
            yield from walk(schema["items"], item, join(path, index), olds.get(key) if key is not None else None)


def evaluate(schema: dict[str, Any], value: Any, root: str = "", old: Any = None) -> CelReport:
    report = CelReport()
    for node, here, previous, path in walk(schema, value, root, old):
        for rule in node.get(VALIDATIONS) or []:
            expression = rule["rule"]
            if is_transition_rule(expression) and previous is None:
                report.skipped_transition += 1
                continue
            context = {"self": here}
            if is_transition_rule(expression):
                context["oldSelf"] = previous
            report.evaluated += 1
            try:
                result = compiled(expression).execute(context)
            except Exception as error:  # the API server rejects what it cannot evaluate
                report.problems.append(Problem(path, f"CEL rule {expression!r} could not be evaluated: {error}", "cel"))
                continue
            if result is not True:
                message = rule.get("message") or f"failed rule: {expression}"
                report.problems.append(Problem(path + rule.get("fieldPath", ""), message, "cel"))
    return report


def rules_in(schema: Any) -> Iterator[str]:
    """Every rule string anywhere in a schema (for compiling them all up front)."""
    if isinstance(schema, dict):
        for rule in schema.get(VALIDATIONS) or []:
            yield rule["rule"]
        for key, child in schema.items():
            if key != VALIDATIONS:
                yield from rules_in(child)
    elif isinstance(schema, list):
        for child in schema:
            yield from rules_in(child)

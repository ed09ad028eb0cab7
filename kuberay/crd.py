"""Check a custom resource (RayService, RayCluster, RayJob) against its CRD
as an API server with `fieldValidation=Strict` would: the version's
`openAPIV3Schema`, unknown fields rejected, `int32`/`int64` ranges, list
uniqueness (`x-kubernetes-list-type`), the CEL rules, and `metadata` as a
Kubernetes ObjectMeta.

The CRDs do not say `additionalProperties: false`: an API server prunes or,
in strict mode, rejects fields the structural schema does not describe. So
the schema is made strict here: every object schema that lists `properties`
and has neither `additionalProperties` nor
`x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`;
`x-kubernetes-int-or-string` becomes "integer or string"; `nullable` adds
null to the type.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import jsonschema
import yaml

from kuberay import cel_rules, core
from kuberay.problems import Problem, from_schema_errors, join

CRD_DIR = Path(__file__).resolve().parent / "crds"
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 structural schema that rejects unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: (value if key in ("enum", "default", "example", "required") else strict(value)) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())
    for name, (low, high) in INT_RANGES.items():
        def in_range(value: Any, low: int = low, high: int = high) -> bool:
            return not isinstance(value, int) or isinstance(value, bool) or low <= value <= high

        checker.checks(name)(in_range)
    return checker


@dataclass(frozen=True)
class CRDVersion:
    group: str
    kind: str
    version: str
    schema: dict[str, Any]  # as published
    validator: jsonschema.Draft7Validator  # on the strict copy


@lru_cache(maxsize=None)
def load(crd_dir: Path = CRD_DIR) -> dict[tuple[str, str], CRDVersion]:
    """(apiVersion, kind) -> its schema; every CEL rule compiled up front."""
    versions: dict[tuple[str, str], CRDVersion] = {}
    checker = _format_checker()
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for entry in crd["spec"]["versions"]:
            schema = entry["schema"]["openAPIV3Schema"]
            for rule in cel_rules.rules_in(schema):
                cel_rules.compiled(rule)
            validator = jsonschema.Draft7Validator(strict(schema), format_checker=checker)
            versions[(f"{group}/{entry['name']}", kind)] = CRDVersion(group, kind, entry["name"], schema, validator)
    return versions


def known(api_version: str, kind: str) -> bool:
    return (api_version, kind) in load()


def _list_problems(schema: dict[str, Any], obj: Any) -> list[Problem]:
    """Duplicates an API server rejects: two items with the same keys in a
    `map` list (e.g. two ports with the same containerPort and protocol), or
    the same value twice in a `set` list."""
    found = []
    for node, value, _, path in cel_rules.walk(schema, obj, ""):
        list_type = node.get("x-kubernetes-list-type")
        if not isinstance(value, list) or list_type not in ("map", "set"):
            continue
        seen: dict[Any, int] = {}
        for index, item in enumerate(value):
            if list_type == "map":
                keys = node.get("x-kubernetes-list-map-keys") or []
                identity: Any = tuple(item.get(k) for k in keys) if isinstance(item, dict) else None
                label = ", ".join(f"{k}={item.get(k)!r}" for k in keys) if isinstance(item, dict) else ""
            else:
                identity, label = yaml.safe_dump(item, sort_keys=True), repr(item)
            if identity is None:
                continue
            if identity in seen:
                found.append(Problem(join(path, index), f"duplicate entry ({label}), same as [{seen[identity]}]", "crd-schema"))
            else:
                seen[identity] = index
    return found


@dataclass
class CRDReport:
    problems: list[Problem]
    cel_evaluated: int
    cel_skipped_transition: int


def check(obj: dict[str, Any], kubernetes_version: str, old: Optional[dict[str, Any]] = None) -> CRDReport:
    entry = load().get((obj.get("apiVersion"), obj.get("kind")))
    if entry is None:
        raise KeyError(f"no CRD for {obj.get('apiVersion')} {obj.get('kind')}")
    problems = from_schema_errors(list(entry.validator.iter_errors(obj)), "crd-schema")
    if isinstance(obj.get("metadata"), dict):
        problems += core.object_meta_problems(obj["metadata"], kubernetes_version)
    problems += _list_problems(entry.schema, obj)
    cel = cel_rules.evaluate(entry.schema, obj, "", old)
    return CRDReport(problems + cel.problems, cel.evaluated, cel.skipped_transition)

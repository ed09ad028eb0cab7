"""A problem found in a manifest, named by the field path an API server
would name (`spec.rayClusterConfig.workerGroupSpecs[0].template...`), and the
translation of jsonschema's errors into such problems."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import jsonschema


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    check: str  # which check found it: crd-schema, cel, kuberay-operator, core-schema, serve, ...

    def __str__(self) -> str:
        return f"{self.path}: {self.message} [{self.check}]"


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
        key = repr(key)  # labels like nvidia.com/gpu stay readable
    return f"{path}.{key}" if path else key


def field_path(parts: Iterable[str | int], root: str = "") -> str:
    path = root
    for part in parts:
        path = join(path, part)
    return path


def from_schema_error(error: jsonschema.ValidationError, check: str, root: str = "") -> list[Problem]:
    """One problem per offending field: an unknown key is named by its own
    path (not its parent's), a missing one likewise."""
    here = field_path(error.absolute_path, root)
    if error.validator == "additionalProperties" and error.validator_value is False and isinstance(error.instance, dict):
        known = set((error.schema.get("properties") or {}).keys())
        patterns = list((error.schema.get("patternProperties") or {}).keys())
        unknown = [k for k in error.instance if k not in known and not any(re.search(p, k) for p in patterns)]
        return [Problem(join(here, key), "unknown field", check) for key in unknown]
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        return [Problem(join(here, key), "required field is missing", check) for key in missing]
    return [Problem(here or "(document)", _message(error), check)]


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator in ("anyOf", "oneOf") and error.context:
        # int-or-string and friends: say what was accepted, not "not valid under any".
        types = sorted({str(sub.validator_value) for sub in error.context if sub.validator == "type"})
        if types:
            return f"{error.instance!r} is not of type {' or '.join(types)}"
    return error.message


def from_schema_errors(errors: Sequence[jsonschema.ValidationError], check: str, root: str = "") -> list[Problem]:
    found: list[Problem] = []
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        found.extend(from_schema_error(error, check, root))
    return found

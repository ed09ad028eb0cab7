"""The request schema of a graph (`graph.request`) as a pydantic model, so a
bad body fails like the recommend app's: 422 naming each field."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError, create_model

from deployments.errors import InvalidInput
from deployments.graph.spec import RequestField

_TYPES: dict[str, Any] = {
    "int": StrictInt,
    "float": StrictFloat | StrictInt,
    "str": StrictStr,
    "bool": StrictBool,
    "list[int]": list[StrictInt],
    "list[float]": list[StrictFloat | StrictInt],
    "list[str]": list[StrictStr],
}


def request_model(name: str, fields: dict[str, RequestField]) -> type[BaseModel]:
    definitions: dict[str, Any] = {}
    for field_name, spec in fields.items():
        annotation = _TYPES[spec.type]
        constraints = {"min_length": spec.min_length, "gt": spec.gt}
        constraints = {k: v for k, v in constraints.items() if v is not None}
        if spec.is_required:
            definitions[field_name] = (annotation, Field(**constraints))
        else:
            definitions[field_name] = (Optional[annotation], Field(spec.default, **constraints))
    return create_model(f"{name}_request", __config__=ConfigDict(extra="forbid"), **definitions)


def parse(model: type[BaseModel], body: Any) -> dict[str, Any]:
    """The validated body as a dict; InvalidInput (422) listing every bad field."""
    try:
        return model.model_validate(body).model_dump()
    except ValidationError as error:
        fields = [
            {"field": "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".") or "body", "reason": e["msg"]}
            for e in error.errors()
        ]
        problem = InvalidInput(fields[0]["field"], fields[0]["reason"])
        problem.details["fields"] = fields
        raise problem from None

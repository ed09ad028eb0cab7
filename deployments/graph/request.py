"""The request schema of a graph (`graph.request`) as a pydantic model, so a
bad body fails like the recommend app's: 422 naming each field."""
from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError, create_model

from deployments.errors import InvalidInput
from deployments.field_paths import reasons
from deployments.graph.spec import DEFAULT_MAX_STR_LENGTH, RequestField

# Ints are 64-bit signed: what Feast's entity keys, numpy and Triton hold. A
# bigger JSON number is the caller's error (422), not a backend failure.
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]

_TYPES: dict[str, Any] = {
    "int": Int64,
    "float": StrictFloat | StrictInt,
    "str": StrictStr,
    "bool": StrictBool,
    "list[int]": list[Int64],
    "list[float]": list[StrictFloat | StrictInt],
    "list[str]": list[Annotated[StrictStr, Field(max_length=DEFAULT_MAX_STR_LENGTH)]],
}


def request_model(name: str, fields: dict[str, RequestField]) -> type[BaseModel]:
    definitions: dict[str, Any] = {}
    for field_name, spec in fields.items():
        annotation = _TYPES[spec.type]
        if spec.unique:
            annotation = Annotated[annotation, AfterValidator(_no_duplicates)]
        constraints: dict[str, Any] = {"min_length": spec.min_length, "max_length": spec.length_bound, "gt": spec.gt}
        constraints = {k: v for k, v in constraints.items() if v is not None}
        if spec.unique:
            constraints["json_schema_extra"] = {"uniqueItems": True}
        if spec.is_required:
            definitions[field_name] = (annotation, Field(**constraints))
        elif spec.default is not None:  # an explicit null is refused: the nodes get the default or a value
            definitions[field_name] = (annotation, Field(spec.default, **constraints))
        else:
            definitions[field_name] = (Optional[annotation], Field(None, **constraints))
    return create_model(f"{name}_request", __config__=ConfigDict(extra="forbid"), **definitions)


def _no_duplicates(values: list) -> list:
    repeated = sorted(value for value, count in Counter(values).items() if count > 1)
    if repeated:
        raise ValueError(f"duplicate values {repeated}")
    return values


def parse(model: type[BaseModel], body: Any) -> dict[str, Any]:
    """The validated body as a dict; InvalidInput (422) listing every bad field."""
    try:
        return model.model_validate(body).model_dump()
    except ValidationError as error:
        fields = [{"field": path or "body", "reason": reason} for path, reason in reasons(error)]
        problem = InvalidInput(fields[0]["field"], fields[0]["reason"])
        problem.details["fields"] = fields
        raise problem from None

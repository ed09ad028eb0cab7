"""Validate a Serve config before anything starts.

Ray's `ServeDeploySchema` checks the file's shape, but it ignores unknown
keys (a misspelt `max_ongoing_request` is silently dropped) and takes
`autoscaling_config` as a plain dict (`min_replicas: 5, max_replicas: 2`
fails only later, in the controller): both are checked here too, unknown
keys against Ray's own pydantic models and every `autoscaling_config`
through `ray.serve.config.AutoscalingConfig`. Each application's builder
then validates its `args` against the builder's pydantic type. Every bad key
or value is reported with its path (`applications[0].args.ranker.timout_s`)
instead of surfacing as a failed deployment later.

    python -m cli.check configs/local.yaml
"""
from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import BaseModel, ValidationError
from ray.serve.schema import ServeDeploySchema

from deployments.field_paths import reasons


class ConfigError(ValueError):
    pass


def _builder_args_type(import_path: str) -> type[BaseModel] | None:
    from ray._common.utils import import_attr

    builder = import_attr(import_path)
    if not inspect.isfunction(builder):
        return None
    params = list(inspect.signature(builder, eval_str=True).parameters.values())
    annotation = params[0].annotation if params else None
    return annotation if inspect.isclass(annotation) and issubclass(annotation, BaseModel) else None


def _format(prefix: str, error: ValidationError) -> str:
    return "\n".join(f"{path}: {reason}" for path, reason in reasons(error, root=prefix))


def _models(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models a field's value may be (through Optional, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    return []


def _item_models(annotation: Any) -> list[type[BaseModel]]:
    """Models of the items of a List field."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _item_models(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _item_models(arg)]
    if origin in (list, typing.List):
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    return []


def _join(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))


def unknown_keys(model: type[BaseModel], data: Any, path: str = "") -> Iterator[str]:
    """Paths of keys that no field of `model` (recursively) accepts."""
    if not isinstance(data, dict):
        return
    fields = {}
    for name, info in model.model_fields.items():
        fields[name] = info
        if info.alias:
            fields[info.alias] = info
    for key, value in data.items():
        here = _join(path, key)
        info = fields.get(key)
        if info is None:
            yield here
            continue
        if isinstance(value, dict):
            candidates = _models(info.annotation)
            if candidates:
                # Unknown only if every model the field may be rejects it.
                per_model = [set(unknown_keys(m, value, here)) for m in candidates]
                yield from sorted(set.intersection(*per_model))
        elif isinstance(value, list):
            for m in _item_models(info.annotation)[:1]:
                for index, item in enumerate(value):
                    yield from unknown_keys(m, item, _join(here, index))


def _autoscaling_problems(config: dict) -> list[str]:
    from ray.serve.config import AutoscalingConfig

    found = []
    for a, app in enumerate(config.get("applications") or []):
        for d, deployment in enumerate((app or {}).get("deployments") or []):
            autoscaling = (deployment or {}).get("autoscaling_config")
            if isinstance(autoscaling, dict):
                try:
                    AutoscalingConfig.model_validate(autoscaling)
                except ValidationError as error:
                    found += _format(f"applications[{a}].deployments[{d}].autoscaling_config", error).splitlines()
    return found


def check_config(config: dict) -> ServeDeploySchema:
    """Raise ConfigError naming every bad key; return the parsed schema."""
    try:
        schema = ServeDeploySchema.model_validate(config)
    except ValidationError as error:
        raise ConfigError(_format("config", error)) from None
    problems = [f"{path}: unknown key (Ray Serve would ignore it)" for path in unknown_keys(ServeDeploySchema, config)]
    problems += _autoscaling_problems(config)
    for index, app in enumerate(schema.applications):
        args_type = _builder_args_type(app.import_path)
        if args_type is None:
            continue
        try:
            args_type.model_validate(app.args or {})
        except ValidationError as error:
            problems.append(_format(f"applications[{index}].args", error))
    if problems:
        raise ConfigError("\n".join(problems))
    return schema


def check_file(path: str | Path) -> ServeDeploySchema:
    with open(path) as handle:
        return check_config(yaml.safe_load(handle))


def main() -> None:
    failed = False
    for path in sys.argv[1:] or ["configs/local.yaml"]:
        try:
            schema = check_file(path)
            print(f"{path}: ok ({', '.join(a.name for a in schema.applications)})")
        except ConfigError as error:
            failed = True
            print(f"{path}: invalid\n{error}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

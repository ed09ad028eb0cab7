"""Check a RayService's `serveConfigV2`: a string holding a Serve config as
YAML, which KubeRay hands to Ray's dashboard as is.

Ray's `ServeDeploySchema` checks its shape, but it ignores unknown keys
(a misspelt `max_ongoing_request` is silently dropped) and takes
`autoscaling_config` as a plain dict (so `min_replicas: 5, max_replicas: 2`
passes and fails only in the controller). Both are checked here: unknown
keys against Ray's own pydantic models, anywhere in the file, and every
`autoscaling_config` through `ray.serve.config.AutoscalingConfig`. The
applications' `args` are then validated by the project's own config check
(`apps.check.check_config`), the one a `serve deploy` of the file would run.
"""
from __future__ import annotations

import types
import typing
from typing import Any, Iterator

import yaml
from pydantic import BaseModel, ValidationError

from kuberay.problems import Problem, field_path, join

ROOT = "spec.serveConfigV2"


def _models(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models a field's value may be (through Optional, Union, List, Dict)."""
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


def _names(model: type[BaseModel]) -> dict[str, Any]:
    names = {}
    for name, info in model.model_fields.items():
        names[name] = info
        if info.alias:
            names[info.alias] = info
    return names


def unknown_keys(model: type[BaseModel], data: Any, path: str) -> Iterator[str]:
    """Paths of keys that no field of `model` (recursively) accepts."""
    if not isinstance(data, dict):
        return
    fields = _names(model)
    for key, value in data.items():
        here = join(path, key)
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
                    yield from unknown_keys(m, item, join(here, index))


def _autoscaling_problems(config: dict[str, Any]) -> list[Problem]:
    from ray.serve.config import AutoscalingConfig

    found = []
    for a, app in enumerate(config.get("applications") or []):
        for d, deployment in enumerate((app or {}).get("deployments") or []):
            autoscaling = (deployment or {}).get("autoscaling_config")
            if not isinstance(autoscaling, dict):
                continue
            here = f"{ROOT} -> applications[{a}].deployments[{d}].autoscaling_config"
            try:
                AutoscalingConfig.model_validate(autoscaling)
            except ValidationError as error:
                for e in error.errors():
                    message = e["msg"].removeprefix("Value error, ")
                    found.append(Problem(field_path(e["loc"], here), message, "serve"))
    return found


def _app_problems(config: dict[str, Any]) -> list[Problem]:
    from apps.check import ConfigError, check_config

    try:
        check_config(config)
    except ConfigError as error:
        found = []
        for line in str(error).splitlines():
            path, _, message = line.partition(": ")
            found.append(Problem(f"{ROOT} -> {path.removeprefix('config.')}", message, "serve"))
        return found
    return []


def check(value: Any) -> list[Problem]:
    from ray.serve.schema import ServeDeploySchema

    if not isinstance(value, str):
        kind = "a mapping" if isinstance(value, dict) else type(value).__name__
        return [Problem(ROOT, f"must be a string (the Serve config as a YAML block `|`), got {kind}", "serve")]
    try:
        config = yaml.safe_load(value)
    except yaml.YAMLError as error:
        return [Problem(ROOT, f"not valid YAML: {error}", "serve")]
    if not isinstance(config, dict):
        return [Problem(ROOT, "must hold a mapping (a Serve config)", "serve")]
    found = [Problem(f"{ROOT} -> {path}", "unknown key (Ray Serve would ignore it)", "serve")
             for path in unknown_keys(ServeDeploySchema, config, "")]
    found += _autoscaling_problems(config)
    return found + _app_problems(config)

"""Validate a Serve config before anything starts.

Ray's `ServeDeploySchema` checks the file's shape; each application's
builder then validates its `args` against the builder's pydantic type, so a
bad key or value is reported with its path (`applications[0].args.ranker.timout_s`)
instead of surfacing as a failed deployment later.

    python -m apps.check configs/local.yaml
"""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError
from ray.serve.schema import ServeDeploySchema


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
    lines = []
    for e in error.errors():
        path = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
        lines.append(f"{path}: {e['msg']}")
    return "\n".join(lines)


def check_config(config: dict) -> ServeDeploySchema:
    """Raise ConfigError naming every bad key; return the parsed schema."""
    try:
        schema = ServeDeploySchema.model_validate(config)
    except ValidationError as error:
        raise ConfigError(_format("config", error)) from None
    problems = []
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

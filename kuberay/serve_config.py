"""Check a RayService's `serveConfigV2`: a string holding a Serve config as
YAML, which KubeRay hands to Ray's dashboard as is.

Its content is checked by the project's own config check
(`cli.check.check_config`, the one `python -m cli.deploy` runs before a
`serve deploy`): Ray's `ServeDeploySchema`, the unknown keys it would
silently drop, every `autoscaling_config` through Ray's `AutoscalingConfig`,
and each application's typed `args`.
"""
from __future__ import annotations

from typing import Any

import yaml

from kuberay.problems import Problem

ROOT = "spec.serveConfigV2"


def _config_problems(config: dict[str, Any]) -> list[Problem]:
    from cli.check import ConfigError, check_config

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
    if not isinstance(value, str):
        kind = "a mapping" if isinstance(value, dict) else type(value).__name__
        return [Problem(ROOT, f"must be a string (the Serve config as a YAML block `|`), got {kind}", "serve")]
    try:
        config = yaml.safe_load(value)
    except yaml.YAMLError as error:
        return [Problem(ROOT, f"not valid YAML: {error}", "serve")]
    if not isinstance(config, dict):
        return [Problem(ROOT, "must hold a mapping (a Serve config)", "serve")]
    return _config_problems(config)

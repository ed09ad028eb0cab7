"""The checks KubeRay's operator makes and the CRD does not: the API server
accepts these objects, and then the operator refuses to reconcile them
(an event and a stuck RayService, found late). Written after KubeRay
v1.7.0's `ValidateRayServiceMetadata` / `ValidateRayServiceSpec` /
`ValidateRayClusterSpec` and its RayCluster webhook.

- name: a RayService at most 47 characters (KubeRay names its RayCluster
  `<name>-xxxxx`, and a RayCluster at most 53, its longest Service suffix
  being `-serve-svc`), a DNS-1035 label;
- `spec.upgradeStrategy.type`: NewCluster, NewClusterWithIncrementalUpgrade
  or None (the CRD types it as any string), and the incremental upgrade's
  required options;
- worker groups: `minReplicas <= maxReplicas`, neither negative, unique
  names, at least one container; resources not set both in
  `rayStartParams` and `resources`; no `labels` in rayStartParams;
- the head Service's name is not set on a RayService.
"""
from __future__ import annotations

import re
from typing import Any

from kuberay.problems import Problem

MAX_NAME = {"RayService": 47, "RayCluster": 53, "RayJob": 47}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
UPGRADE_TYPES = ("NewCluster", "NewClusterWithIncrementalUpgrade", "None")
RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")


def _problem(path: str, message: str) -> Problem:
    return Problem(path, message, "kuberay-operator")


def metadata_problems(obj: dict[str, Any]) -> list[Problem]:
    kind = obj.get("kind", "")
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str):
        return [_problem("metadata.name", "required")]
    found = []
    limit = MAX_NAME.get(kind)
    if limit and len(name) > limit:
        found.append(_problem("metadata.name", f"{kind} name should be no more than {limit} characters, got {len(name)}"))
    if not DNS_1035.match(name):
        found.append(_problem("metadata.name", f"{kind} name should be a valid DNS-1035 label, got {name!r}"))
    return found


def _group_problems(group: dict[str, Any], path: str) -> list[Problem]:
    found = []
    containers = (((group.get("template") or {}).get("spec") or {}).get("containers")) or []
    if not containers:
        found.append(_problem(f"{path}.template.spec.containers", "should have at least one container"))
    params = group.get("rayStartParams") or {}
    if isinstance(params, dict):
        if any(params.get(k) for k in RESOURCE_PARAMS) and group.get("resources"):
            found.append(_problem(f"{path}.resources", "resources set both in rayStartParams and resources; use only one"))
        if "labels" in params:
            found.append(_problem(f"{path}.rayStartParams.labels", "not supported; use the group's top-level labels"))
    return found


def cluster_spec_problems(spec: dict[str, Any], path: str) -> list[Problem]:
    """RayCluster spec (a RayCluster's `spec`, a RayService's `spec.rayClusterConfig`)."""
    if not isinstance(spec, dict):
        return []
    found = []
    head = spec.get("headGroupSpec")
    if isinstance(head, dict):
        found += _group_problems(head, f"{path}.headGroupSpec")
    names: dict[str, int] = {}
    for index, group in enumerate(spec.get("workerGroupSpecs") or []):
        if not isinstance(group, dict):
            continue
        here = f"{path}.workerGroupSpecs[{index}]"
        found += _group_problems(group, here)
        name = group.get("groupName")
        if name in names:
            found.append(_problem(f"{here}.groupName", f"worker group names must be unique: {name!r} is also [{names[name]}]"))
        names.setdefault(name, index)
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        for field, value in (("minReplicas", low), ("maxReplicas", high)):
            if isinstance(value, int) and value < 0:
                found.append(_problem(f"{here}.{field}", f"worker group {name} has negative {field} {value}"))
        if isinstance(low, int) and isinstance(high, int) and low > high:
            found.append(_problem(f"{here}.minReplicas", f"worker group {name} has minReplicas {low} greater than maxReplicas {high}"))
    return found


def rayservice_problems(obj: dict[str, Any]) -> list[Problem]:
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        return []
    found = cluster_spec_problems(spec.get("rayClusterConfig"), "spec.rayClusterConfig")
    head_service = ((spec.get("rayClusterConfig") or {}).get("headGroupSpec") or {}).get("headService") or {}
    if isinstance(head_service, dict) and (head_service.get("metadata") or {}).get("name"):
        found.append(_problem("spec.rayClusterConfig.headGroupSpec.headService.metadata.name", "should not be set on a RayService"))
    strategy = spec.get("upgradeStrategy") or {}
    upgrade = strategy.get("type") if isinstance(strategy, dict) else None
    if upgrade is not None and upgrade not in UPGRADE_TYPES:
        found.append(_problem("spec.upgradeStrategy.type", f"{upgrade!r} is invalid, valid options are {', '.join(UPGRADE_TYPES)}"))
    if upgrade == "NewClusterWithIncrementalUpgrade":
        if not (spec.get("rayClusterConfig") or {}).get("enableInTreeAutoscaling"):
            found.append(_problem("spec.upgradeStrategy.type", "NewClusterWithIncrementalUpgrade needs the Ray autoscaler"))
        options = strategy.get("clusterUpgradeOptions")
        if not isinstance(options, dict):
            found.append(_problem("spec.upgradeStrategy.clusterUpgradeOptions", "required for NewClusterWithIncrementalUpgrade"))
        else:
            for field, low, high in (("maxSurgePercent", 0, 100), ("stepSizePercent", 0, 100)):
                value = options.get(field, 100 if field == "maxSurgePercent" else None)
                if not isinstance(value, int) or not low <= value <= high:
                    found.append(_problem(f"spec.upgradeStrategy.clusterUpgradeOptions.{field}", f"must be between {low} and {high}"))
            if not isinstance(options.get("intervalSeconds"), int) or options["intervalSeconds"] <= 0:
                found.append(_problem("spec.upgradeStrategy.clusterUpgradeOptions.intervalSeconds", "must be greater than 0"))
            if not options.get("gatewayClassName"):
                found.append(_problem("spec.upgradeStrategy.clusterUpgradeOptions.gatewayClassName", "required"))
    delay = spec.get("rayClusterDeletionDelaySeconds")
    if isinstance(delay, int) and delay < 0:
        found.append(_problem("spec.rayClusterDeletionDelaySeconds", "should be a non-negative integer"))
    return found


def check(obj: dict[str, Any]) -> list[Problem]:
    kind = obj.get("kind")
    found = metadata_problems(obj)
    if kind == "RayService":
        found += rayservice_problems(obj)
    elif kind == "RayCluster":
        found += cluster_spec_problems(obj.get("spec"), "spec")
    elif kind == "RayJob":
        found += cluster_spec_problems((obj.get("spec") or {}).get("rayClusterSpec"), "spec.rayClusterSpec")
    return found

"""Offline checks of Kubernetes manifests, as far as an API server, the
KubeRay operator and Ray Serve would take them, without any of them:

- KubeRay objects (ray.io/v1 RayService, RayCluster, RayJob): the CRD's
  schema, strict about unknown fields, and its CEL rules (kuberay/crd.py);
  the operator's own checks (kuberay/operator_rules.py); for a RayService,
  `serveConfigV2` with Ray's schema, unknown keys, `autoscaling_config` and
  the applications' args (kuberay/serve_config.py);
- core objects (Deployment, Service, HorizontalPodAutoscaler, Ingress, ...):
  the Kubernetes API's schemas, strict (kuberay/core.py).

    python -m kuberay.validate kuberay/rendered/*.yaml
    python -m kuberay.validate --old previous.yaml new.yaml   # an update: CEL transition rules too

Exit status 1 when anything is wrong, each problem named by its field path:

    kuberay/rendered/rayservice.yaml: RayService/serve-graphs: spec.rayClusterConfig.workerGroupSpecs[0]
        .template.spec.containers[0].resourcs: unknown field [crd-schema]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from kuberay import core, crd, operator_rules, serve_config
from kuberay.problems import Problem

DEFAULT_KUBERNETES = "1.33"


@dataclass
class Report:
    """Problems of one object, and how many CEL rules ran (so that a rule
    silently not evaluated would show)."""

    label: str
    problems: list[Problem] = field(default_factory=list)
    custom_resource: bool = False
    cel_evaluated: int = 0
    cel_skipped_transition: int = 0


def label(obj: Any) -> str:
    if not isinstance(obj, dict):
        return "(not an object)"
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


def check_object(obj: Any, kubernetes_version: str = DEFAULT_KUBERNETES, old: Optional[dict[str, Any]] = None) -> Report:
    report = Report(label(obj))
    if not isinstance(obj, dict):
        report.problems.append(Problem("(document)", "not a mapping", "document"))
        return report
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if crd.known(api_version, kind):
        result = crd.check(obj, kubernetes_version, old)
        report.custom_resource = True
        report.problems += result.problems
        report.cel_evaluated, report.cel_skipped_transition = result.cel_evaluated, result.cel_skipped_transition
        report.problems += operator_rules.check(obj)
        if kind == "RayService" and isinstance(obj.get("spec"), dict) and "serveConfigV2" in obj["spec"]:
            report.problems += serve_config.check(obj["spec"]["serveConfigV2"])
    elif isinstance(api_version, str) and isinstance(kind, str) and core.known(api_version, kind, kubernetes_version):
        report.problems += core.check(obj, kubernetes_version)
    else:
        report.problems.append(Problem("kind", f"no schema for apiVersion {api_version!r} kind {kind!r}", "document"))
    return report


def load_documents(path: Path) -> list[Any]:
    with open(path) as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _by_identity(documents: list[Any]) -> dict[tuple, dict[str, Any]]:
    return {(d.get("apiVersion"), d.get("kind"), (d.get("metadata") or {}).get("name")): d for d in documents if isinstance(d, dict)}


def check_files(
    paths: Sequence[Path], kubernetes_version: str = DEFAULT_KUBERNETES, old_paths: Sequence[Path] = ()
) -> list[tuple[Path, Report]]:
    olds: dict[tuple, dict[str, Any]] = {}
    for old_path in old_paths:
        olds.update(_by_identity(load_documents(old_path)))
    reports = []
    for path in paths:
        for doc in load_documents(path):
            identity = next(iter(_by_identity([doc])), None)
            reports.append((path, check_object(doc, kubernetes_version, olds.get(identity))))
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kuberay.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--kubernetes-version", default=DEFAULT_KUBERNETES, help=f"core schemas (default {DEFAULT_KUBERNETES})")
    parser.add_argument("--old", action="append", type=Path, default=[], help="previous manifests: check as an update")
    args = parser.parse_args(argv)
    failed = False
    for path, report in check_files(args.files, args.kubernetes_version, args.old):
        if report.problems:
            failed = True
            for problem in report.problems:
                print(f"{path}: {report.label}: {problem}", file=sys.stderr)
        else:
            cel = ""
            if report.custom_resource:
                cel = f" (CEL rules: {report.cel_evaluated} evaluated, {report.cel_skipped_transition} transition rules skipped)"
            print(f"{path}: {report.label}: ok{cel}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

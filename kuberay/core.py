"""Check core Kubernetes objects (Deployment, Service, HorizontalPodAutoscaler,
Ingress, ...) against the API's own JSON schemas from the `kubernetes-validate`
package, in its strict variant (unknown fields rejected), reporting every
error rather than the first; plus the API server's checks that a schema
cannot express and that a manifest of this project could get wrong.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import jsonschema
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

from kuberay.problems import Problem, from_schema_errors

DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _schema_dir(kubernetes_version: str) -> tuple[str, str]:
    """kubernetes-validate's folder for the newest schemas not newer than the version."""
    wanted = kv.major_minor(kubernetes_version.lstrip("v"))
    candidates = [v for v in kv.all_versions() if tuple(map(int, kv.major_minor(v).split("."))) <= tuple(map(int, wanted.split(".")))]
    if not candidates:
        raise ValueError(f"kubernetes-validate has no schemas for Kubernetes {kubernetes_version}")
    return f"kubernetes-json-schema/v{candidates[-1]}-local-strict", candidates[-1]


@lru_cache(maxsize=None)
def _registry(kubernetes_version: str) -> Registry:
    folder, version = _schema_dir(kubernetes_version)
    definitions = kv.schema_contents(f"{folder}/_definitions.json", version)
    return Resource.from_contents(definitions) @ Registry()


@lru_cache(maxsize=None)
def _validator(kind: str, api_version: str, kubernetes_version: str) -> jsonschema.Draft202012Validator:
    folder, version = _schema_dir(kubernetes_version)
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # networking.k8s.io/v1 -> networking-v1
    try:
        schema = kv.schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        raise KeyError(f"no Kubernetes {version} schema for {api_version} {kind}") from None
    registry = Resource.from_contents(schema) @ _registry(kubernetes_version)
    return jsonschema.Draft202012Validator(schema, registry=registry)


@lru_cache(maxsize=None)
def _object_meta_validator(kubernetes_version: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"{DEFINITIONS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    return jsonschema.Draft202012Validator(schema, registry=_registry(kubernetes_version))


def known(api_version: str, kind: str, kubernetes_version: str) -> bool:
    try:
        _validator(kind, api_version, kubernetes_version)
    except KeyError:
        return False
    return True


def object_meta_problems(metadata: dict[str, Any], kubernetes_version: str) -> list[Problem]:
    """`metadata` of any object (the CRDs leave it to the API server)."""
    errors = list(_object_meta_validator(kubernetes_version).iter_errors(metadata))
    return from_schema_errors(errors, "core-schema", root="metadata")


def _server_rules(obj: dict[str, Any]) -> list[Problem]:
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    name = (obj.get("metadata") or {}).get("name", "")
    found = []
    # Service names become DNS labels; other objects' names are DNS subdomains.
    pattern, limit = (DNS_1035, 63) if kind == "Service" else (DNS_1123_SUBDOMAIN, 253)
    if not isinstance(name, str) or not pattern.match(name) or len(name) > limit:
        found.append(Problem("metadata.name", f"{name!r} is not a valid {kind} name (DNS, at most {limit} characters)", "core-api"))
    if kind == "HorizontalPodAutoscaler":
        low, high = spec.get("minReplicas", 1), spec.get("maxReplicas")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            found.append(Problem("spec.minReplicas", f"{low} is greater than spec.maxReplicas {high}", "core-api"))
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        wanted = ((spec.get("selector") or {}).get("matchLabels")) or {}
        labels = (((spec.get("template") or {}).get("metadata") or {}).get("labels")) or {}
        if isinstance(wanted, dict) and isinstance(labels, dict) and any(labels.get(k) != v for k, v in wanted.items()):
            found.append(Problem("spec.template.metadata.labels", "`selector` does not match template `labels`", "core-api"))
    return found


def check(obj: dict[str, Any], kubernetes_version: str) -> list[Problem]:
    validator = _validator(str(obj.get("kind")), str(obj.get("apiVersion")), kubernetes_version)
    return from_schema_errors(list(validator.iter_errors(obj)), "core-schema") + _server_rules(obj)

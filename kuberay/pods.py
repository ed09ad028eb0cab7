"""Pieces every pod of the render shares: least-privilege security contexts,
environment from Secrets, writable scratch volumes, placement.

One place for them, so that no workload can drift into running as root or
with a credential written into its manifest.
"""
from __future__ import annotations

from typing import Any, Optional

from kuberay.spec import ClusterSpec, Placement, SecretRef

LABEL_APP = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
PART_OF = "serve-graphs"


def labels(component: str, name: Optional[str] = None) -> dict[str, str]:
    return {LABEL_APP: name or component, LABEL_COMPONENT: component, LABEL_PART_OF: PART_OF}


def selector(component: str, name: Optional[str] = None) -> dict[str, str]:
    """The labels a Service / Deployment selects on (immutable once applied)."""
    return {LABEL_APP: name or component, LABEL_COMPONENT: component}


def pod_security_context(spec: ClusterSpec) -> dict[str, Any]:
    security = spec.security
    return {
        "runAsNonRoot": True,
        "runAsUser": security.run_as_user,
        "runAsGroup": security.run_as_group,
        "fsGroup": security.fs_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(read_only_root: bool) -> dict[str, Any]:
    """`read_only_root` is False only where the image keeps its Python
    installation in the home directory that the program writes caches to
    (the rayproject/ray images: /home/ray/anaconda3 next to ~/.cache)."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def secret_env(variable: str, ref: SecretRef) -> dict[str, Any]:
    key_ref: dict[str, Any] = {"name": ref.name, "key": ref.key}
    if ref.optional:
        key_ref["optional"] = True
    return {"name": variable, "valueFrom": {"secretKeyRef": key_ref}}


def plain_env(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in values.items()]


def registry_credentials(spec: ClusterSpec) -> list[dict[str, Any]]:
    """Basic auth for the MLflow registry, from the Secret (the MLflow
    client reads MLFLOW_TRACKING_USERNAME/PASSWORD itself)."""
    return [
        secret_env("MLFLOW_TRACKING_USERNAME", spec.secrets.mlflow_username),
        secret_env("MLFLOW_TRACKING_PASSWORD", spec.secrets.mlflow_password),
    ]


def registry_env(spec: ClusterSpec) -> list[dict[str, Any]]:
    """What a standalone MLflow client (an init container) needs."""
    return [
        {"name": "MLFLOW_TRACKING_URI", "value": spec.mlflow_uri},
        *registry_credentials(spec),
        {"name": "MLFLOW_DISABLE_TELEMETRY", "value": "true"},
    ]


def empty_dir(name: str, size_limit: Optional[str] = None, memory: bool = False) -> dict[str, Any]:
    source: dict[str, Any] = {}
    if memory:
        source["medium"] = "Memory"
    if size_limit:
        source["sizeLimit"] = size_limit
    return {"name": name, "emptyDir": source}


def mount(name: str, path: str, read_only: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "mountPath": path}
    if read_only:
        entry["readOnly"] = True
    return entry


def placement(where: Placement) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if where.node_selector:
        fields["nodeSelector"] = dict(where.node_selector)
    if where.tolerations:
        fields["tolerations"] = [t.model_dump(exclude_none=True) for t in where.tolerations]
    return fields


def http_probe(path: str, port: int | str, period_s: int, failures: int, timeout_s: int = 2) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period_s,
        "timeoutSeconds": timeout_s,
        "failureThreshold": failures,
    }

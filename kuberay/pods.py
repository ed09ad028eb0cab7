"""Pieces every pod of the render shares: least-privilege security contexts,
environment from Secrets, writable scratch volumes, placement.

One place for them, so that no workload can drift into running as root or
with a credential written into its manifest.
"""
from __future__ import annotations

from typing import Any, Optional

from kuberay.spec import ClusterSpec, Placement, SecretRef, SecretVolume

LABEL_APP = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
PART_OF = "serve-graphs"

# Mode of files from Secrets (and the autoscaler's API credentials): read by
# owner and group only. The kubelet makes them root-owned with the pod's
# fsGroup as group, so 0440 is the least that lets the pods' user (uid 1000,
# in that group) read them; 0400 would leave them readable by root alone.
SECRET_FILE_MODE = 0o440
# Where Kubernetes clients (Ray's KubeRay autoscaler included) look for the
# pod's service-account credentials: token, ca.crt, namespace.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


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


def container_security_context(spec: ClusterSpec, read_only_root: bool) -> dict[str, Any]:
    """Complete on its own (user and group too, not only inherited from the
    pod): KubeRay copies the Ray container's context into the init container
    it injects (`wait-gcs-ready`), and the autoscaler sidecar gets exactly the
    one given in `autoscalerOptions`.

    `read_only_root` is False only where the image keeps its Python
    installation in the home directory that the program writes caches to
    (the rayproject/ray images: /home/ray/anaconda3 next to ~/.cache)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": spec.security.run_as_user,
        "runAsGroup": spec.security.run_as_group,
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


def secret_volume(name: str, ref: SecretVolume) -> dict[str, Any]:
    """The whole Secret as files (no `items`: a key missing from it is a
    missing file, which an `optional` API key slot tolerates). Not optional
    itself: without the Secret the pod waits in ContainerCreating with an
    event naming it, instead of starting replicas that cannot authenticate."""
    return {"name": name, "secret": {"secretName": ref.name, "defaultMode": SECRET_FILE_MODE}}


def service_account_volume(name: str) -> dict[str, Any]:
    """The service-account credentials Kubernetes would mount into every
    container of a pod (the same projection its admission plugin adds:
    token, cluster CA, namespace), as a volume of its own. With
    `automountServiceAccountToken: false` on the pod, only the container that
    mounts this volume at SERVICE_ACCOUNT_DIR holds the token."""
    return {
        "name": name,
        "projected": {
            "defaultMode": SECRET_FILE_MODE,
            "sources": [
                # 3607 s: what the admission plugin requests; the kubelet refreshes it
                # before it expires, and Ray's autoscaler re-reads it every minute.
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }


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

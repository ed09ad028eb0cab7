"""A model server on Kubernetes: a Deployment whose pods fetch the model
from the MLflow registry in an init container, into an emptyDir the server
then reads, and a ClusterIP Service in front of it.

Triton (kuberay/triton.py), MLServer (kuberay/mlserver.py) and vLLM's OpenAI
server (kuberay/vllm_server.py) are all this shape; each says only what is
its own (the server container, its volumes, its ports), so that the security
contexts, the rollout and the fetch step cannot drift apart between them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from kuberay import pods
from kuberay.spec import ClusterSpec, Placement

# Where the init container writes the model and the server reads it (the
# emptyDir volume "models"); "tmp" is the scratch volume both write to.
MODELS = "/models"


def metadata(spec: ClusterSpec, component: str, name: str) -> dict[str, Any]:
    """An object's name, namespace and the labels of its component."""
    return {"name": name, "namespace": spec.namespace, "labels": pods.labels(component, name)}


def container(spec: ClusterSpec, name: str, image: str, **fields: Any) -> dict[str, Any]:
    """A container under the render's least-privilege context, with a
    read-only root filesystem: what it writes goes to mounted volumes."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        **fields,
        "securityContext": pods.container_security_context(spec, read_only_root=True),
    }


def fetch_container(spec: ClusterSpec, name: str, fetch_args: list[str]) -> dict[str, Any]:
    """The init container: this project's image running `python -m
    kuberay.fetch <fetch_args>` against the registry, writing under MODELS."""
    return container(
        spec,
        name,
        spec.platform_image,
        command=["python", "-m", "kuberay.fetch", *fetch_args],
        env=[*pods.registry_env(spec), {"name": "HOME", "value": "/tmp"}],
        resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
        volumeMounts=[pods.mount("models", MODELS), pods.mount("tmp", "/tmp")],
    )


@dataclass(frozen=True)
class ModelServer:
    """What one model server's Deployment says of its own."""

    component: str  # the app.kubernetes.io/component label ("triton", "mlserver", "vllm")
    name: str
    replicas: int
    init: dict[str, Any]  # fetch_container(...)
    server: dict[str, Any]
    volumes: list[dict[str, Any]]  # "models" and "tmp" among them
    placement: Placement
    pod_annotations: dict[str, str] = field(default_factory=dict)
    termination_grace_s: Optional[int] = None  # Kubernetes' default (30 s) when None


def deployment(spec: ClusterSpec, server: ModelServer) -> dict[str, Any]:
    template_metadata: dict[str, Any] = {"labels": pods.labels(server.component, server.name)}
    if server.pod_annotations:
        template_metadata["annotations"] = dict(server.pod_annotations)
    pod: dict[str, Any] = {
        "securityContext": pods.pod_security_context(spec),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if server.termination_grace_s is not None:
        pod["terminationGracePeriodSeconds"] = server.termination_grace_s
    pod.update(
        initContainers=[server.init],
        containers=[server.server],
        volumes=list(server.volumes),
        **pods.placement(server.placement),
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(spec, server.component, server.name),
        "spec": {
            "replicas": server.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": pods.selector(server.component, server.name)},
            # A new pod is ready before an old one goes (needs room for one more: a spare GPU for Triton and vLLM).
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": template_metadata, "spec": pod},
        },
    }


def service(spec: ClusterSpec, component: str, name: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    """A ClusterIP Service selecting the component's pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, component, name),
        "spec": {"type": "ClusterIP", "selector": pods.selector(component, name), "ports": ports},
    }

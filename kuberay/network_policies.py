"""NetworkPolicies: which pods may open a connection to which port.

Without them any pod in the cluster reaches Ray's dashboard and Jobs API,
the GCS, the client port, Triton, MLServer and vLLM directly, around the API
keys of the serve routes. With them (ingress rules only; egress stays open):

- Ray pods: the serve port from the Ingress controller's namespace and from
  the Ray pods (an LLM node may call the chat app through the serve
  Service); the dashboard and the agents' port also from the KubeRay
  operator's namespace (it deploys serveConfigV2 and reads Serve's status
  there); every other port (GCS, client, metrics, the raylets') from the Ray
  pods only; the metrics port also from Prometheus's namespace;
- Triton, MLServer and vLLM: their serving ports from the Ray pods only,
  their metrics from Prometheus's namespace (vLLM's /metrics is on its API
  port, whose /v1 routes need the key; Triton and MLServer ask no credential,
  so the policy is their only guard);
- the servers this render does not deploy (MLflow, Redis), selected by the
  labels kuberay/cluster.yaml names: their ports from the pods that call them.

A NetworkPolicy takes effect only where the cluster's network plugin
enforces it (Calico, Cilium, ...): kuberay/README.md says so.
"""
from __future__ import annotations

from typing import Any

from kuberay import mlserver, pods, triton, vllm_server
from kuberay.rayservice import AGENT_PORT, DASHBOARD_PORT, METRICS_PORT
from kuberay.spec import ClusterSpec

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace


def ray_pods(spec: ClusterSpec) -> dict[str, Any]:
    """The head and worker pods of the RayService (kuberay/rayservice.py labels them)."""
    return {
        "matchLabels": {pods.LABEL_APP: spec.rayservice.name},
        "matchExpressions": [{"key": pods.LABEL_COMPONENT, "operator": "In", "values": ["ray-head", "ray-worker"]}],
    }


def _namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: name}}}


def _ports(numbers: list[int]) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": number} for number in numbers]


def policy(spec: ClusterSpec, name: str, selector: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": spec.namespace, "labels": pods.labels("network-policy", name)},
        "spec": {"podSelector": selector, "policyTypes": ["Ingress"], "ingress": rules},
    }


def manifests(spec: ClusterSpec) -> list[dict[str, Any]]:
    from_ray = {"podSelector": ray_pods(spec)}
    from_prometheus = _namespace(spec.network.monitoring_namespace)
    clients = {
        "ray": from_ray,
        "triton": {"podSelector": {"matchLabels": pods.selector(triton.COMPONENT, spec.triton.name)}},
        "mlserver": {"podSelector": {"matchLabels": pods.selector(mlserver.COMPONENT, spec.mlserver.name)}},
        "vllm": {"podSelector": {"matchLabels": pods.selector(vllm_server.COMPONENT, spec.vllm.name)}},
    }
    service = spec.rayservice
    documents = [
        policy(spec, f"{service.name}-ray", ray_pods(spec), [
            {"from": [_namespace(spec.network.ingress_controller_namespace), from_ray], "ports": _ports([service.serve_port, service.grpc_port])},
            {"from": [from_ray]},  # every port: GCS, dashboard, client, metrics, the raylets' and agents'
            {"from": [_namespace(spec.network.kuberay_operator_namespace)], "ports": _ports([DASHBOARD_PORT, AGENT_PORT])},
            {"from": [from_prometheus], "ports": _ports([METRICS_PORT])},
        ]),
        policy(spec, spec.triton.name, {"matchLabels": pods.selector(triton.COMPONENT, spec.triton.name)}, [
            {"from": [from_ray], "ports": _ports([spec.triton.grpc_port, spec.triton.http_port])},
            {"from": [from_prometheus], "ports": _ports([spec.triton.metrics_port])},
        ]),
        policy(spec, spec.mlserver.name, {"matchLabels": pods.selector(mlserver.COMPONENT, spec.mlserver.name)}, [
            {"from": [from_ray], "ports": _ports([spec.mlserver.grpc_port, spec.mlserver.http_port])},
            {"from": [from_prometheus], "ports": _ports([spec.mlserver.metrics_port])},
        ]),
        policy(spec, spec.vllm.name, {"matchLabels": pods.selector(vllm_server.COMPONENT, spec.vllm.name)}, [
            {"from": [from_ray, from_prometheus], "ports": _ports([spec.vllm.port])},  # /metrics is on the API port
        ]),
    ]
    for backend in spec.network.external_backends:
        documents.append(policy(spec, backend.name, {"matchLabels": dict(backend.pod_labels)}, [
            {"from": [clients[client] for client in backend.clients], "ports": _ports(backend.ports)},
        ]))
    return documents

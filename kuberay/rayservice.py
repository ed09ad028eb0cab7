"""The RayService: a Ray cluster (head, CPU and GPU worker groups, Ray's
autoscaler) plus the Serve config it runs, as one KubeRay object.

`serveConfigV2` is the text of the Serve config file (`configs/cluster.yaml`)
as is, comments included: the file `serve deploy` takes is the file the
RayService runs, never a hand-kept copy.
"""
from __future__ import annotations

import json
from typing import Any

from kuberay import pods
from kuberay.spec import ClusterSpec, Resources, WorkerGroup

# Ray's own ports (defaults of `ray start`, which KubeRay runs in the container).
GCS_PORT, DASHBOARD_PORT, CLIENT_PORT, METRICS_PORT, AGENT_PORT = 6379, 8265, 10001, 8080, 52365
# The vLLM server's key in the Ray pods' environment (and the vLLM pods').
VLLM_API_KEY_ENV = "VLLM_API_KEY"
PAYLOAD_LOG_REDIS_URL_ENV = "PAYLOAD_LOG_REDIS_URL"
# The dashboard agent's unified check (Ray >= 2.53): raylet, plus GCS on the head.
NODE_HEALTH_PATH = "/api/healthz"
# Volumes of the Ray pods (KubeRay adds its own: shared-mem at /dev/shm, ray-logs at /tmp/ray on the head).
API_KEYS_VOLUME = "api-keys"
AUTOSCALER_API_VOLUME = "autoscaler-api-access"


def ray_env(spec: ClusterSpec) -> list[dict[str, Any]]:
    """Environment of every Ray container. Serve replicas are processes of
    the raylet, so they inherit it: the registry credentials, Feast's Redis
    connection (referenced as ${FEAST_REDIS_CONNECTION} by
    configs/feast/cluster/feature_store.yaml) and the HF token."""
    return [
        *pods.plain_env(spec.rayservice.env),
        {"name": "FEAST_REGISTRY_PATH", "value": spec.feast_registry_path},
        pods.secret_env("FEAST_REDIS_CONNECTION", spec.secrets.feast_redis_connection),
        pods.secret_env(PAYLOAD_LOG_REDIS_URL_ENV, spec.secrets.payload_log_redis_url),  # a redis payload_log sink's url_env
        *pods.registry_credentials(spec),  # the URI is in the Serve config's args
        pods.secret_env("HF_TOKEN", spec.secrets.hf_token),
        # What a remote LLM node sends to the vLLM server (api_key_env: VLLM_API_KEY, kuberay/consistency.py).
        pods.secret_env(VLLM_API_KEY_ENV, spec.secrets.vllm_api_key),
    ]


def _ports(serve_port: int, grpc_port: int, head: bool) -> list[dict[str, Any]]:
    ports = [{"name": "serve", "containerPort": serve_port}, {"name": "serve-grpc", "containerPort": grpc_port},
             {"name": "metrics", "containerPort": METRICS_PORT}]
    if head:
        ports = [
            {"name": "gcs-server", "containerPort": GCS_PORT},
            {"name": "dashboard", "containerPort": DASHBOARD_PORT},
            {"name": "client", "containerPort": CLIENT_PORT},
            *ports,
        ]
    return ports


def _probes(serve_port: int, head: bool) -> dict[str, Any]:
    """Written out rather than left to KubeRay's injection, so that they are
    reviewed and checked like the rest. Same checks as KubeRay's for Ray 2.60:
    the node's unified health endpoint; on workers readiness also needs the
    Serve proxy, so a worker without a healthy proxy takes no traffic
    (failureThreshold 1, as KubeRay does)."""
    liveness = pods.http_probe(NODE_HEALTH_PATH, AGENT_PORT, period_s=5, failures=120, timeout_s=5)
    liveness["initialDelaySeconds"] = 30
    if head:
        readiness = pods.http_probe(NODE_HEALTH_PATH, AGENT_PORT, period_s=5, failures=10, timeout_s=5)
    else:
        check = (
            f"wget -T 2 -q -O /dev/null http://localhost:{AGENT_PORT}{NODE_HEALTH_PATH} && "
            f"wget -T 2 -q -O- http://localhost:{serve_port}/-/healthz | grep -q success"
        )
        readiness = {"exec": {"command": ["bash", "-c", check]}, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 1}
    readiness["initialDelaySeconds"] = 10
    return {"livenessProbe": liveness, "readinessProbe": readiness}


def _ray_pod(spec: ClusterSpec, container_name: str, resources: Resources, placement, head: bool) -> dict[str, Any]:
    """Head and worker pods. Neither mounts a service-account token into its
    Ray container (`automountServiceAccountToken: false`): nothing in Ray's
    processes calls the Kubernetes API. The head pod carries the credentials
    of the ServiceAccount KubeRay creates for the autoscaler as a volume that
    only the autoscaler sidecar mounts (autoscaler_options), so the dashboard
    and its job API, in the Ray container, hold no API token.

    Workers mount the API-key Secret read-only: Serve replicas run there (the
    head has num-cpus 0), and read their keys from it when they start."""
    serve_port = spec.rayservice.serve_port
    container = {
        "name": container_name,
        "image": spec.platform_image,
        "imagePullPolicy": "IfNotPresent",
        "env": ray_env(spec),
        "ports": _ports(serve_port, spec.rayservice.grpc_port, head),
        "resources": resources.manifest(),
        **_probes(serve_port, head),
        "securityContext": pods.container_security_context(spec, read_only_root=False),
    }
    if head:
        volumes = [pods.service_account_volume(AUTOSCALER_API_VOLUME)]
    else:
        api_keys = spec.secrets.api_keys
        container["volumeMounts"] = [pods.mount(API_KEYS_VOLUME, api_keys.mount_path, read_only=True)]
        volumes = [pods.secret_volume(API_KEYS_VOLUME, api_keys)]
    pod_spec: dict[str, Any] = {
        "securityContext": pods.pod_security_context(spec),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "containers": [container],
        "volumes": volumes,
        **pods.placement(placement),
    }
    component = "ray-head" if head else "ray-worker"
    return {"metadata": {"labels": pods.labels(component, spec.rayservice.name)}, "spec": pod_spec}


def head_group(spec: ClusterSpec) -> dict[str, Any]:
    head = spec.rayservice.head
    return {
        # No Serve replica or task on the head: it keeps the GCS, the
        # dashboard (KubeRay deploys serveConfigV2 through it) and Serve's
        # controller responsive under load.
        "rayStartParams": {"num-cpus": "0"},
        "template": _ray_pod(spec, "ray-head", head.resources, head.placement, head=True),
    }


def _custom_resources(group: WorkerGroup) -> dict[str, str]:
    """Ray detects a node's GPU type when it starts (resource
    `accelerator_type:L4`), but the autoscaler plans from the group spec
    before the node exists, so the type is declared here, in the format
    KubeRay passes to `ray start --resources` and the autoscaler parses."""
    if not group.accelerator_type:
        return {}
    return {"resources": '"' + json.dumps({f"accelerator_type:{group.accelerator_type}": 1}).replace('"', '\\"') + '"'}


def worker_group(spec: ClusterSpec, group: WorkerGroup) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.min_replicas,
        "maxReplicas": group.max_replicas,
        # CPUs, memory and GPUs are taken from the container's limits by
        # KubeRay (nvidia.com/gpu -> num-gpus).
        "rayStartParams": _custom_resources(group),
        "template": _ray_pod(spec, "ray-worker", group.resources, group.placement, head=False),
    }
    if group.idle_timeout_s is not None:
        entry["idleTimeoutSeconds"] = group.idle_timeout_s
    return entry


def autoscaler_options(spec: ClusterSpec) -> dict[str, Any]:
    autoscaler = spec.rayservice.autoscaler
    return {
        "version": autoscaler.version,
        "upscalingMode": autoscaler.upscaling_mode,
        "idleTimeoutSeconds": autoscaler.idle_timeout_s,
        "imagePullPolicy": "IfNotPresent",
        "resources": autoscaler.resources.manifest(),
        # The sidecar only writes /tmp/ray (a volume KubeRay adds) and calls the API.
        "securityContext": pods.container_security_context(spec, read_only_root=True),
        # The only container with the API token: KubeRay sets the head pod's
        # serviceAccountName to the account it binds the autoscaler's Role to,
        # and Ray's autoscaler reads the token and CA from this directory.
        "volumeMounts": [pods.mount(AUTOSCALER_API_VOLUME, pods.SERVICE_ACCOUNT_DIR, read_only=True)],
    }


def rayservice(spec: ClusterSpec, serve_config_text: str) -> dict[str, Any]:
    service = spec.rayservice
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": service.name, "namespace": spec.namespace, "labels": pods.labels("rayservice", service.name)},
        "spec": {
            # kuberay/README.md, "Upgrades": why NewCluster.
            "upgradeStrategy": {"type": service.upgrade_strategy},
            # Traffic goes to the workers' proxies; the head stays a control plane.
            "excludeHeadPodFromServeSvc": True,
            "serveService": {
                "metadata": {"name": service.serve_service, "labels": pods.labels("serve", service.name)},
                "spec": {"type": "ClusterIP", "ports": [
                    {"name": "serve", "port": service.serve_port, "targetPort": service.serve_port},
                    {"name": "serve-grpc", "port": service.grpc_port, "targetPort": service.grpc_port, "appProtocol": "grpc"},
                ]},
            },
            "serveConfigV2": serve_config_text,
            "rayClusterConfig": {
                "rayVersion": service.ray_version,
                # Ray's token auth: the dashboard, Jobs API, GCS and client port refuse a caller without
                # the token; KubeRay sets RAY_AUTH_MODE and RAY_AUTH_TOKEN (from this Secret) in every Ray container.
                "authOptions": {"mode": "token", "secretName": spec.secrets.ray_auth_token},
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": autoscaler_options(spec),
                "headGroupSpec": head_group(spec),
                "workerGroupSpecs": [worker_group(spec, group) for group in service.worker_groups],
            },
        },
    }

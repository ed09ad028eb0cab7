"""MLServer as its own Deployment + Service + HorizontalPodAutoscaler.

The second Open Inference Protocol server, behind `v2_model` nodes with
`server: mlserver` (the ensemble app's scikit-learn ranker): like Triton, a
server the graph's replicas call over gRPC, not a Ray actor, so it scales on
its own signal. Its scikit-learn runtime runs on CPU, so it asks for no GPU
and stays off the GPU nodes (they are tainted; it has no toleration).

The model repository is exported from the MLflow registry when the pod
starts, by an init container running the local stack's exporter
(`python -m kuberay.fetch mlserver`: a folder per registered version, with
its `model-settings.json` and pickle), into an emptyDir that
`mlserver start` reads: the shape of every model server
(kuberay/model_server.py); what is MLServer's own is here. MLServer reads
its settings from MLSERVER_* variables, as on the local stack
(local_stack/mlserver_server.py), so nothing is written next to the models.
"""
from __future__ import annotations

from typing import Any

from kuberay import model_server, pods
from kuberay.spec import ClusterSpec

REPOSITORY = model_server.MODELS  # the exported model repository MLServer serves
COMPONENT = "mlserver"


def settings_env(spec: ClusterSpec) -> list[dict[str, str]]:
    """MLServer's settings (MLSERVER_*). The directories it would otherwise
    create in its working directory (metrics shared across parallel workers,
    unpacked custom environments) go to /tmp: the root filesystem is read-only."""
    mlserver = spec.mlserver
    return pods.plain_env({
        "MLSERVER_HOST": "0.0.0.0",  # reached on the pod IP through the Service
        "MLSERVER_HTTP_PORT": str(mlserver.http_port),
        "MLSERVER_GRPC_PORT": str(mlserver.grpc_port),
        "MLSERVER_METRICS_PORT": str(mlserver.metrics_port),
        "MLSERVER_PARALLEL_WORKERS": str(mlserver.parallel_workers),
        "MLSERVER_LOAD_MODELS_AT_STARTUP": "true",  # ready only once every exported version has loaded
        "MLSERVER_DEBUG": "false",  # MLServer's default is true: debug logging, an access-log line per request
        "MLSERVER_METRICS_DIR": "/tmp/mlserver-metrics",
        "MLSERVER_ENVIRONMENTS_DIR": "/tmp/mlserver-envs",
        "HOME": "/tmp",
    })


def _server_container(spec: ClusterSpec) -> dict[str, Any]:
    mlserver = spec.mlserver
    return model_server.container(
        spec,
        "mlserver",
        mlserver.image,
        command=["mlserver", "start", REPOSITORY],
        env=settings_env(spec),
        ports=[
            {"name": "http", "containerPort": mlserver.http_port},
            {"name": "grpc", "containerPort": mlserver.grpc_port},
            {"name": "metrics", "containerPort": mlserver.metrics_port},
        ],
        resources=mlserver.resources.manifest(),
        # Ready only when every model version is (loaded at start-up); a
        # pickle loads in seconds, the startup probe allows 2.5 minutes.
        startupProbe=pods.http_probe("/v2/health/ready", "http", period_s=5, failures=30),
        readinessProbe=pods.http_probe("/v2/health/ready", "http", period_s=5, failures=3),
        livenessProbe=pods.http_probe("/v2/health/live", "http", period_s=10, failures=3),
        volumeMounts=[pods.mount("models", REPOSITORY, read_only=True), pods.mount("tmp", "/tmp")],
    )


def deployment(spec: ClusterSpec) -> dict[str, Any]:
    mlserver = spec.mlserver
    model_args = [arg for model in mlserver.models for arg in ("--model", model)]
    return model_server.deployment(spec, model_server.ModelServer(
        component=COMPONENT,
        name=mlserver.name,
        # The HPA owns the replica count; this is the count before it acts.
        replicas=mlserver.autoscaling.min_replicas,
        init=model_server.fetch_container(
            spec, "export-repository", ["mlserver", *model_args, "--repository", REPOSITORY]),
        server=_server_container(spec),
        volumes=[pods.empty_dir("models", size_limit="2Gi"), pods.empty_dir("tmp", size_limit="1Gi")],
        placement=mlserver.placement,
        pod_annotations={
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(mlserver.metrics_port),
            "prometheus.io/path": "/metrics",
        },
    ))


def service(spec: ClusterSpec) -> dict[str, Any]:
    mlserver = spec.mlserver
    return model_server.service(spec, COMPONENT, mlserver.name, [
        {"name": "http", "port": mlserver.http_port, "targetPort": "http"},
        {"name": "grpc", "port": mlserver.grpc_port, "targetPort": "grpc", "appProtocol": "grpc"},
        {"name": "metrics", "port": mlserver.metrics_port, "targetPort": "metrics"},
    ])


def autoscaler(spec: ClusterSpec) -> dict[str, Any]:
    """Scale on CPU utilisation, which metrics-server provides (no adapter).
    With the models in the server process (parallel_workers 0) a pod answers
    on one core, and a scikit-learn prediction is CPU work: a busy core is
    the queue. MLServer's own queue metrics exist only with adaptive
    batching or a worker pool, which the render does not switch on."""
    mlserver = spec.mlserver
    hpa = mlserver.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": model_server.metadata(spec, COMPONENT, mlserver.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": mlserver.name},
            "minReplicas": hpa.min_replicas,
            "maxReplicas": hpa.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": hpa.cpu_utilization_target}},
                }
            ],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
                "scaleDown": {"stabilizationWindowSeconds": hpa.scale_down_stabilization_s},
            },
        },
    }


def manifests(spec: ClusterSpec) -> list[dict[str, Any]]:
    return [deployment(spec), service(spec), autoscaler(spec)]

"""Triton as its own Deployment + Service + HorizontalPodAutoscaler.

The ranker is not a Ray actor: Triton batches on its GPU across every Serve
replica that calls it, and scales on its own signal, the time requests wait
in its queue (`nv_inference_queue_duration_us`), not on Serve's.

The model repository is exported from the MLflow registry when the pod
starts, by an init container running this project's exporter
(`python -m kuberay.fetch triton`, target `gpu`: native ONNX Runtime backend,
KIND_GPU), into an emptyDir that Triton reads.
"""
from __future__ import annotations

from typing import Any

from kuberay import pods
from kuberay.spec import ClusterSpec

QUEUE_METRIC = "nv_inference_queue_duration_us"
REPOSITORY = "/models"


def _export_container(spec: ClusterSpec) -> dict[str, Any]:
    return {
        "name": "export-repository",
        "image": spec.platform_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "kuberay.fetch", "triton", "--model", spec.triton.model, "--repository", REPOSITORY],
        "env": [*pods.registry_env(spec), {"name": "HOME", "value": "/tmp"}],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
        "volumeMounts": [pods.mount("models", REPOSITORY), pods.mount("tmp", "/tmp")],
        "securityContext": pods.container_security_context(spec, read_only_root=True),
    }


def _server_container(spec: ClusterSpec) -> dict[str, Any]:
    triton = spec.triton
    return {
        "name": "triton",
        "image": triton.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["tritonserver"],
        "args": [
            f"--model-repository={REPOSITORY}",
            "--strict-readiness=true",      # not ready until every model is
            "--exit-on-error=true",
            f"--http-port={triton.http_port}",
            f"--grpc-port={triton.grpc_port}",
            f"--metrics-port={triton.metrics_port}",
        ],
        "ports": [
            {"name": "http", "containerPort": triton.http_port},
            {"name": "grpc", "containerPort": triton.grpc_port},
            {"name": "metrics", "containerPort": triton.metrics_port},
        ],
        "resources": triton.resources.manifest(),
        "startupProbe": pods.http_probe("/v2/health/ready", "http", period_s=5, failures=60),
        "readinessProbe": pods.http_probe("/v2/health/ready", "http", period_s=5, failures=3),
        "livenessProbe": pods.http_probe("/v2/health/live", "http", period_s=10, failures=3),
        "volumeMounts": [pods.mount("models", REPOSITORY, read_only=True), pods.mount("tmp", "/tmp")],
        "securityContext": pods.container_security_context(spec, read_only_root=True),
    }


def deployment(spec: ClusterSpec) -> dict[str, Any]:
    triton = spec.triton
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": triton.name, "namespace": spec.namespace, "labels": pods.labels("triton", triton.name)},
        "spec": {
            # The HPA owns the replica count; this is the count before it acts.
            "replicas": triton.autoscaling.min_replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": pods.selector("triton", triton.name)},
            # A new pod is ready before an old one goes (needs one spare GPU).
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": pods.labels("triton", triton.name),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(triton.metrics_port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "securityContext": pods.pod_security_context(spec),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "initContainers": [_export_container(spec)],
                    "containers": [_server_container(spec)],
                    "volumes": [pods.empty_dir("models", size_limit="10Gi"), pods.empty_dir("tmp", size_limit="1Gi")],
                    **pods.placement(triton.placement),
                },
            },
        },
    }


def service(spec: ClusterSpec) -> dict[str, Any]:
    triton = spec.triton
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": triton.name, "namespace": spec.namespace, "labels": pods.labels("triton", triton.name)},
        "spec": {
            "type": "ClusterIP",
            "selector": pods.selector("triton", triton.name),
            "ports": [
                {"name": "http", "port": triton.http_port, "targetPort": "http"},
                {"name": "grpc", "port": triton.grpc_port, "targetPort": "grpc", "appProtocol": "grpc"},
                {"name": "metrics", "port": triton.metrics_port, "targetPort": "metrics"},
            ],
        },
    }


def autoscaler(spec: ClusterSpec) -> dict[str, Any]:
    """Scale on queueing, per pod. The metric comes from a metrics adapter
    (e.g. prometheus-adapter) that serves Triton's cumulative counter as a
    rate: queue microseconds per request over a minute (kuberay/README.md).
    GPU utilisation would be the wrong signal: a dynamically batched model
    can run at low utilisation while requests wait."""
    triton = spec.triton
    hpa = triton.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": triton.name, "namespace": spec.namespace, "labels": pods.labels("triton", triton.name)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": triton.name},
            "minReplicas": hpa.min_replicas,
            "maxReplicas": hpa.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": QUEUE_METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(hpa.queue_time_target_us)},
                    },
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

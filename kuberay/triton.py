"""Triton as its own Deployment + Service + HorizontalPodAutoscaler.

The ranker is not a Ray actor: Triton batches on its GPU across every Serve
replica that calls it, and scales on its own signal, the time requests wait
in its queue (`nv_inference_queue_duration_us`), not on Serve's.

The model repository is exported from the MLflow registry when the pod
starts, by an init container running this project's exporter
(`python -m kuberay.fetch triton`, target `gpu`: native ONNX Runtime backend,
KIND_GPU), into an emptyDir that Triton reads: the shape of every model
server (kuberay/model_server.py); what is Triton's own is here.
"""
from __future__ import annotations

from typing import Any

from kuberay import model_server, pods
from kuberay.spec import ClusterSpec

QUEUE_METRIC = "nv_inference_queue_duration_us"
REPOSITORY = model_server.MODELS  # the exported model repository Triton serves
COMPONENT = "triton"


def _server_container(spec: ClusterSpec) -> dict[str, Any]:
    triton = spec.triton
    return model_server.container(
        spec,
        "triton",
        triton.image,
        command=["tritonserver"],
        args=[
            f"--model-repository={REPOSITORY}",
            "--strict-readiness=true",      # not ready until every model is
            "--exit-on-error=true",
            f"--http-port={triton.http_port}",
            f"--grpc-port={triton.grpc_port}",
            f"--metrics-port={triton.metrics_port}",
        ],
        ports=[
            {"name": "http", "containerPort": triton.http_port},
            {"name": "grpc", "containerPort": triton.grpc_port},
            {"name": "metrics", "containerPort": triton.metrics_port},
        ],
        resources=triton.resources.manifest(),
        startupProbe=pods.http_probe("/v2/health/ready", "http", period_s=5, failures=60),
        readinessProbe=pods.http_probe("/v2/health/ready", "http", period_s=5, failures=3),
        livenessProbe=pods.http_probe("/v2/health/live", "http", period_s=10, failures=3),
        volumeMounts=[pods.mount("models", REPOSITORY, read_only=True), pods.mount("tmp", "/tmp")],
    )


def deployment(spec: ClusterSpec) -> dict[str, Any]:
    triton = spec.triton
    return model_server.deployment(spec, model_server.ModelServer(
        component=COMPONENT,
        name=triton.name,
        # The HPA owns the replica count; this is the count before it acts.
        replicas=triton.autoscaling.min_replicas,
        init=model_server.fetch_container(
            spec, "export-repository", ["triton", "--model", triton.model, "--repository", REPOSITORY]),
        server=_server_container(spec),
        volumes=[pods.empty_dir("models", size_limit="10Gi"), pods.empty_dir("tmp", size_limit="1Gi")],
        placement=triton.placement,
        pod_annotations={
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(triton.metrics_port),
            "prometheus.io/path": "/metrics",
        },
    ))


def service(spec: ClusterSpec) -> dict[str, Any]:
    triton = spec.triton
    return model_server.service(spec, COMPONENT, triton.name, [
        {"name": "http", "port": triton.http_port, "targetPort": "http"},
        {"name": "grpc", "port": triton.grpc_port, "targetPort": "grpc", "appProtocol": "grpc"},
        {"name": "metrics", "port": triton.metrics_port, "targetPort": "metrics"},
    ])


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
        "metadata": model_server.metadata(spec, COMPONENT, triton.name),
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

"""The Ingress to the RayService's serve Service: the one way in from
outside the cluster (the recommend graph under /recommend, the OpenAI API
under /v1). The Triton and vLLM Services stay cluster-internal."""
from __future__ import annotations

from typing import Any

from kuberay import pods
from kuberay.spec import ClusterSpec


def ingress(spec: ClusterSpec) -> dict[str, Any]:
    config = spec.ingress
    service = spec.rayservice
    body: dict[str, Any] = {
        "ingressClassName": config.class_name,
        "rules": [
            {
                "host": config.host,
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": service.serve_service, "port": {"number": service.serve_port}}},
                        }
                    ]
                },
            }
        ],
    }
    if config.tls_secret:
        body["tls"] = [{"hosts": [config.host], "secretName": config.tls_secret}]
    metadata: dict[str, Any] = {"name": config.name, "namespace": spec.namespace, "labels": pods.labels("ingress", config.name)}
    if config.annotations:
        metadata["annotations"] = dict(config.annotations)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": body}


def manifests(spec: ClusterSpec) -> list[dict[str, Any]]:
    return [ingress(spec)]

"""The RayService's worker groups as a Ray autoscaling config for one machine.

In a cluster, KubeRay's autoscaler turns the RayCluster's worker groups into
node types (CPU from the container's cpu limit, GPU from `nvidia.com/gpu`,
custom resources such as `accelerator_type:L4` from `rayStartParams`).
Here the same function of Ray's (`_derive_autoscaling_config_from_ray_cr`,
the one the autoscaler container runs) reads the rendered RayService, and
only the provider changes: Ray's fake multi-node provider starts each
"node" as a raylet on this machine with those resources. So a graph node
asking for `num_gpus: 1` makes the autoscaler add a `gpu` worker here for
the same reason it adds one on Kubernetes, and one source (kuberay/cluster.yaml)
feeds both.

What differs locally, on purpose:
- the head keeps CPUs (on Kubernetes it has `num-cpus: 0`), so the local
  graphs still run on a one-node cluster;
- no `memory` resource (the fake provider rejects it as a custom resource)
  and a small object store per fake node (they share this machine's RAM);
- `min_workers` and idle timeouts are the caller's: a laptop keeps no idle
  GPU node, and tests want the idle worker gone in seconds, not minutes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kuberay.render import RENDERED

# The fake provider's name for the head node type (ray.autoscaler._private.fake_multi_node).
FAKE_HEAD_NODE_TYPE = "ray.head.default"
KUBERAY_HEAD_GROUP = "headgroup"


def ray_cluster_cr(rayservice_file: Path = RENDERED / "rayservice.yaml") -> dict[str, Any]:
    """The RayCluster the RayService creates (its rayClusterConfig), as the
    KubeRay autoscaler reads it from the API server."""
    for document in yaml.safe_load_all(rayservice_file.read_text()):
        if document and document.get("kind") == "RayService":
            meta = document["metadata"]
            return {"metadata": {"name": meta["name"], "namespace": meta.get("namespace", "default")},
                    "spec": document["spec"]["rayClusterConfig"]}
    raise ValueError(f"{rayservice_file}: no RayService document")


def fake_autoscaling_config(
    gcs_address: str,
    head_cpus: int,
    *,
    min_workers: int = 0,
    idle_timeout_s: float = 60,
    object_store_bytes: int = 200 * 1024 * 1024,
    rayservice_file: Path = RENDERED / "rayservice.yaml",
) -> dict[str, Any]:
    """A `ray start --head --autoscaling-config` file for `RAY_FAKE_CLUSTER=1`."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    config = _derive_autoscaling_config_from_ray_cr(ray_cluster_cr(rayservice_file))
    node_types = config["available_node_types"]
    node_types.pop(KUBERAY_HEAD_GROUP)
    for node_type in node_types.values():
        node_type["min_workers"] = min(min_workers, node_type["max_workers"])
        node_type.pop("idle_timeout_s", None)
        node_type["resources"].pop("memory", None)
        node_type["resources"]["object_store_memory"] = object_store_bytes
    node_types[FAKE_HEAD_NODE_TYPE] = {
        "min_workers": 0, "max_workers": 0, "node_config": {}, "resources": {"CPU": head_cpus},
    }
    config.update(
        head_node_type=FAKE_HEAD_NODE_TYPE,
        idle_timeout_minutes=idle_timeout_s / 60,
        provider={
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            # Every fake node has the IP 127.0.0.1: tell nodes apart by id.
            "use_node_id_as_ip": True,
            "launch_multiple": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "foreground_node_launch": True,
        },
    )
    return config


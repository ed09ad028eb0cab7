"""The local autoscaling cluster's node types are the RayService's worker
groups, as KubeRay's autoscaler derives them (kuberay/local_cluster.py)."""
from __future__ import annotations

from pathlib import Path

import yaml

from kuberay.local_cluster import FAKE_HEAD_NODE_TYPE, fake_autoscaling_config
from kuberay.render import RENDERED
from kuberay.spec import load_spec

SPEC = load_spec(Path(RENDERED).parent / "cluster.yaml")


def test_every_worker_group_is_a_node_type_with_the_pods_resources():
    config = fake_autoscaling_config("127.0.0.1:6379", head_cpus=8)
    node_types = config["available_node_types"]
    assert set(node_types) == {group.name for group in SPEC.rayservice.worker_groups} | {FAKE_HEAD_NODE_TYPE}
    for group in SPEC.rayservice.worker_groups:
        resources = node_types[group.name]["resources"]
        assert resources["CPU"] == int(group.resources.cpu)
        assert resources.get("GPU", 0) == group.resources.gpus
        if group.accelerator_type:
            assert resources[f"accelerator_type:{group.accelerator_type}"] == 1
        assert node_types[group.name]["max_workers"] == group.max_replicas
        assert "memory" not in resources  # the fake provider refuses it


def test_the_local_head_keeps_cpus_and_workers_start_at_the_callers_minimum():
    config = fake_autoscaling_config("127.0.0.1:6379", head_cpus=8, min_workers=0, idle_timeout_s=10)
    assert config["head_node_type"] == FAKE_HEAD_NODE_TYPE
    assert config["available_node_types"][FAKE_HEAD_NODE_TYPE]["resources"] == {"CPU": 8}
    assert all(t["min_workers"] == 0 for t in config["available_node_types"].values())
    assert config["idle_timeout_minutes"] == 10 / 60
    assert config["provider"]["type"] == "fake_multinode"
    assert config["provider"]["gcs_address"] == "127.0.0.1:6379"


def test_a_change_to_a_worker_group_reaches_the_local_node_types(tmp_path):
    documents = list(yaml.safe_load_all((RENDERED / "rayservice.yaml").read_text()))
    service = next(d for d in documents if d and d.get("kind") == "RayService")
    gpu = next(g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    gpu["maxReplicas"] = 2
    gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 4
    changed = tmp_path / "rayservice.yaml"
    changed.write_text(yaml.safe_dump_all(documents))

    node_type = fake_autoscaling_config("127.0.0.1:6379", 8, rayservice_file=changed)["available_node_types"]["gpu"]
    assert node_type["resources"]["GPU"] == 4
    assert node_type["max_workers"] == 2

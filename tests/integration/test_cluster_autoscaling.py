"""Ray cluster autoscaling, on one machine.

The session's head runs Ray's autoscaler with the fake multi-node provider;
its worker node types are the RayService's worker groups, derived by Ray's
own KubeRay code from kuberay/rendered/rayservice.yaml
(kuberay/local_cluster.py). A graph that asks for a GPU makes the
autoscaler add a `gpu` worker; `python -m cli.deploy` updates the graph on
that two-node cluster in place; when the graph goes, the idle worker goes.
"""
from __future__ import annotations

import copy
import time

import httpx
import ray
from ray.util.state import list_actors

from tests.integration.test_deploy import deploy_cli
from tests.servers import restore, wait_app, wait_http
import pytest

pytestmark = pytest.mark.integration

REQUEST = {"user_id": 5, "item_ids": [1, 2, 3, 4], "k": 2, "explain": False}


def with_gpu_graph(serve_config: dict, max_ongoing_requests: int = 64) -> dict:
    """The session's config plus the recommend graph again, its graph ingress on an L4 GPU."""
    config = copy.deepcopy(serve_config)
    gpu = copy.deepcopy(config["applications"][0])
    gpu["name"], gpu["route_prefix"] = "recommend-gpu", "/recommend-gpu"
    gpu["args"].pop("drift", None)  # only the graph ingress, which asks for the GPU: no drift monitor of its own
    gpu["deployments"][0].update(
        max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_cpus": 1, "num_gpus": 1, "accelerator_type": "L4"},
    )
    config["applications"].append(gpu)
    return config


def alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node["Alive"]]


def gpu_nodes() -> list[dict]:
    return [node for node in alive_nodes() if node["Resources"].get("GPU")]


def replica_nodes(app: str) -> dict[str, str]:
    """Replica actor name -> node id, for one application's live replicas."""
    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    return {a.name: a.node_id for a in actors if (a.name or "").startswith(f"SERVE_REPLICA::{app}#")}


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(1)
    raise TimeoutError(f"{what} not within {timeout_s:.0f} s")


def test_a_gpu_graph_adds_a_gpu_worker_that_goes_when_idle(serve_config, ray_cluster, recommend_url, tmp_path):
    assert gpu_nodes() == [], "no GPU node before any deployment asks for one"
    nodes_before = len(alive_nodes())
    started = time.monotonic()
    result = deploy_cli(with_gpu_graph(serve_config), tmp_path, ray_cluster["dashboard_url"])
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        (node,) = wait_for(gpu_nodes, 120, "a GPU worker node")
        added_after_s = time.monotonic() - started
        # The node type is the RayService's `gpu` worker group (kuberay/cluster.yaml): 8 CPUs, 1 L4.
        assert node["Resources"]["CPU"] == 8 and node["Resources"]["GPU"] == 1
        assert node["Resources"]["accelerator_type:L4"] == 1
        assert len(alive_nodes()) == nodes_before + 1

        wait_app("recommend-gpu", {"RUNNING"}, timeout_s=180)
        placed = replica_nodes("recommend-gpu")
        assert set(placed.values()) == {node["NodeID"]}, "the GPU graph's replica runs on the GPU worker"
        base = recommend_url.removesuffix("/recommend")
        wait_http(f"{base}/recommend-gpu/readyz", timeout_s=60)
        answer = httpx.post(f"{base}/recommend-gpu", json=REQUEST, timeout=10)
        assert answer.status_code == 200 and len(answer.json()["items"]) == 2

        # An in-place update on the two-node cluster keeps the replica on the worker.
        result = deploy_cli(with_gpu_graph(serve_config, max_ongoing_requests=32), tmp_path, ray_cluster["dashboard_url"])
        assert result.returncode == 0, result.stdout + result.stderr
        wait_app("recommend-gpu", {"RUNNING"}, timeout_s=60)
        time.sleep(3)
        assert replica_nodes("recommend-gpu") == placed
        assert httpx.post(f"{base}/recommend-gpu", json=REQUEST, timeout=10).status_code == 200
    finally:
        removed = time.monotonic()
        restore(serve_config)

    idle_timeout_s = ray_cluster["idle_worker_timeout_s"]
    wait_for(lambda: not gpu_nodes(), idle_timeout_s + 60, "the idle GPU worker's removal")
    removed_after_s = time.monotonic() - removed
    print(f"GPU worker added {added_after_s:.1f} s after the deploy, removed {removed_after_s:.1f} s after the graph went")
    assert removed_after_s >= idle_timeout_s, "removed only once idle for the configured timeout"
    assert len(alive_nodes()) == nodes_before
    assert httpx.post(recommend_url, json=REQUEST, timeout=10).status_code == 200

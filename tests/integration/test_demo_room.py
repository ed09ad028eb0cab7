"""Room for a user's own graph beside the demo: with every application of
configs/local.yaml deployed (recommend, canary, ensemble, chat; the canary
on a copy of the registry), the graph of docs/graphs.md's first example, taken from
the page as written, deploys beside them and serves; and everything then
deployed reserves no more CPUs than `make demo`'s Ray head declares on a
2-core laptop (local_stack.demo.demo_head_cpus), with room left for one
more node of user code placed apart (a whole CPU), so the same deploy finds
room there too: graph ingresses and the nodes that wait on a backend
reserve a quarter of a CPU, the ensemble's PyTorch node half of one, the
LLM engine's bundle one."""
from __future__ import annotations

import copy
import re
import time

import httpx
import pytest
import yaml

from local_stack.demo import demo_head_cpus
from local_stack.paths import PROJECT_ROOT
from local_stack.serve_configs import application, local_config, point_graph
from tests.servers import deploy, registry_copy, restore, wait_app, wait_http

pytestmark = pytest.mark.integration

LAPTOP_CORES = 2


def docs_first_graph() -> dict:
    """The first Serve application in docs/graphs.md, as a user would copy it."""
    text = (PROJECT_ROOT / "docs" / "graphs.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    (app,) = yaml.safe_load(block)["applications"]
    return app


def reserved_cpus() -> float:
    """CPUs reserved across the cluster, once the figure holds still for 3 s
    (Ray's resource view follows actor starts and stops within a second)."""
    import ray

    def used() -> float:
        return ray.cluster_resources().get("CPU", 0.0) - ray.available_resources().get("CPU", 0.0)

    last, steady_since = used(), time.monotonic()
    deadline = time.monotonic() + 60
    while time.monotonic() - steady_since < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
        now = used()
        if abs(now - last) > 1e-6:
            last, steady_since = now, time.monotonic()
    return last


def reservations() -> list[tuple[str, float]]:
    """Each live actor's and placement group's reserved CPUs (what the failure message shows)."""
    from ray.util.state import list_actors, list_placement_groups

    actors = [(actor.class_name, (actor.required_resources or {}).get("CPU", 0.0))
              for actor in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000)]
    groups = [(f"placement group {group.name or group.placement_group_id[:8]}",
               sum(bundle.get("unit_resources", {}).get("CPU", 0.0) for bundle in group.bundles or []))
              for group in list_placement_groups(filters=[("state", "=", "CREATED")], detail=True, limit=1000)]
    return sorted(actors + groups)


def test_a_users_graph_from_the_docs_deploys_beside_the_whole_demo_and_serves(serve_config, triton, mlserver, recommend_url,
                                                                              chat_url, stack, tmp_path):
    _, uri = registry_copy(stack, tmp_path, {"stable": "1", "canary": "2"})
    shipped = local_config(serve_config["http_options"]["port"], triton.grpc_url, mlserver_grpc=mlserver.grpc_url)
    canary, ensemble = application(shipped, "canary"), application(shipped, "ensemble")
    for node in canary["args"]["graph"]["nodes"].values():
        if node["kind"] == "triton_model":
            node["config"]["registry_uri"] = uri
    mine = point_graph(copy.deepcopy(docs_first_graph()), triton.grpc_url, chat_url)
    config = copy.deepcopy(serve_config)
    assert {app["name"] for app in config["applications"]} | {"canary", "ensemble"} == {app["name"] for app in shipped["applications"]}
    config["applications"] += [canary, ensemble, mine]
    base = recommend_url.removesuffix("/recommend")
    try:
        deploy(config)
        wait_app(mine["name"], {"RUNNING"}, timeout_s=180)
        wait_app("canary", {"RUNNING"}, timeout_s=180)
        wait_app("ensemble", {"RUNNING"}, timeout_s=180)
        wait_http(f"{base}{mine['route_prefix']}/readyz", timeout_s=60)
        answer = httpx.post(f"{base}{mine['route_prefix']}", json={"user_id": 7, "item_ids": [1, 2, 3, 4], "k": 2}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["items"]) == 2 and answer.json()["model"]["name"] == "ranker"
        reserved, head = reserved_cpus(), demo_head_cpus(LAPTOP_CORES)
        print(f"\nCPUs reserved with the demo's apps and the user's graph: {reserved:g} of the demo head's {head:g} on {LAPTOP_CORES} cores")
        assert reserved + 1 <= head, f"{reserved:g} CPUs reserved: {reservations()}"
    finally:
        restore(serve_config)

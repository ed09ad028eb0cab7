"""The declarative graphs under Serve (apps.graph:build): the configs in
configs/graphs/ deployed next to the session's apps, nodes inline and placed
apart as deployments of their own."""
from __future__ import annotations

import copy
import time

import httpx
import pytest
import yaml

from tests.servers import deploy, metric_sum, replicas, restore, scrape, wait_app, wait_http

ITEMS = list(range(1, 11))


def graph_app(path: str, triton, llm_url: str, llm_model: str) -> dict:
    """A graph config's application with the test's Triton and chat app."""
    with open(path) as handle:
        (app,) = yaml.safe_load(handle)["applications"]
    for node in app["args"]["graph"]["nodes"].values():
        if node["kind"] == "triton_model":
            node["config"]["url"] = triton.grpc_url
        if node["kind"] == "llm":
            node["config"].update(url=llm_url, model=llm_model)
    return app


@pytest.fixture(scope="module")
def graphs(serve_config, triton, recommend_url, chat_url):
    """recommend.yaml with its ranker placed apart (its own deployment, 2
    replicas), ab.yaml all inline; both next to the session's apps."""
    recommend = graph_app("configs/graphs/recommend.yaml", triton, chat_url, "tiny-llama")
    recommend["args"]["graph"]["nodes"]["ranker"].update(placement="deployment", num_replicas=2)
    ab = graph_app("configs/graphs/ab.yaml", triton, chat_url, "tiny-llama")
    config = copy.deepcopy(serve_config)
    config["applications"] += [recommend, ab]
    deploy(config)
    base = recommend_url.removesuffix("/recommend")
    for app in (recommend, ab):
        wait_app(app["name"], {"RUNNING"}, timeout_s=180)
        wait_http(f"{base}{app['route_prefix']}/readyz", timeout_s=60)
    yield {"recommend": f"{base}{recommend['route_prefix']}", "ab": f"{base}{ab['route_prefix']}", "app": recommend["name"]}
    restore(serve_config)


def test_the_recommend_graph_ranks_like_the_recommend_app(graphs, recommend_url):
    body = {"user_id": 7, "item_ids": ITEMS, "k": 3, "explain": False}
    expected = httpx.post(recommend_url, json=body, timeout=10).json()
    answer = httpx.post(graphs["recommend"], json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in expected["items"]]
    assert [i["score"] for i in got["items"]] == pytest.approx([i["score"] for i in expected["items"]], abs=1e-6)
    assert got["model"] == expected["model"] == {"name": "ranker", "version": "1", "alias": "champion"}
    assert got["routes"] == {"explanation": "default"} and got["explanation"] is None
    assert {"features", "ranker", "ranking", "total"} <= set(got["latency_ms"])


def test_a_node_placed_apart_is_a_deployment_of_its_own(graphs):
    running = replicas()
    assert len(running[f"{graphs['app']}#node:ranker"]) == 2
    assert f"{graphs['app']}#node:features" not in running  # inline: inside the ingress replica
    readiness = httpx.get(f"{graphs['recommend']}/readyz", timeout=10).json()
    assert readiness["checks"]["ranker"]["ready"] and readiness["checks"]["ranker"]["detail"].startswith("[deployment]")


def test_the_llm_explains_through_the_graph(graphs):
    answer = httpx.post(graphs["recommend"], json={"user_id": 7, "item_ids": ITEMS, "k": 3}, timeout=60).json()
    assert answer["routes"] == {"explanation": "cases[0]"}
    assert answer["explanation"]["model"] == "tiny-llama" and answer["explanation"]["text"]


def test_a_bad_request_names_the_field(graphs):
    answer = httpx.post(graphs["recommend"], json={"user_id": "7", "item_ids": []}, timeout=10)
    assert answer.status_code == 422
    fields = {f["field"] for f in answer.json()["error"]["fields"]}
    assert fields == {"user_id", "item_ids"}
    not_json = httpx.post(graphs["recommend"], content=b"{nope", headers={"content-type": "application/json"}, timeout=10)
    assert not_json.status_code == 422 and not_json.json()["error"]["fields"][0]["field"] == "body"


def test_unknown_entities_are_a_404(graphs):
    answer = httpx.post(graphs["recommend"], json={"user_id": 999999, "item_ids": [1, 2], "explain": False}, timeout=10)
    assert answer.status_code == 404


def test_the_ab_graph_is_sticky_and_names_the_version(graphs):
    versions = {"champion": "1", "challenger": "2"}
    seen = set()
    for user in range(1, 13):
        first, again = (httpx.post(graphs["ab"], json={"user_id": user, "item_ids": ITEMS, "k": 3}, timeout=10).json() for _ in range(2))
        variant = first["routes"]["ab"]
        seen.add(variant)
        assert again["routes"]["ab"] == variant
        assert first["model"] == {"name": "ranker", "version": versions[variant], "alias": variant}
    assert seen == {"champion", "challenger"}


def test_the_graph_draws_itself(graphs):
    text = httpx.get(f"{graphs['ab']}/graph", timeout=10).text
    assert text.startswith("flowchart") and "champion" in text and "challenger" in text


def test_each_variant_has_its_requests_latency_and_score_distribution(graphs, ray_cluster):
    """What compares a challenger with the champion, on Ray's Prometheus endpoint."""
    sent = {"champion": 0, "challenger": 0}
    for user in range(100, 120):
        answer = httpx.post(graphs["ab"], json={"user_id": user, "item_ids": ITEMS, "k": 3}, timeout=10).json()
        sent[answer["routes"]["ab"]] += 1

    def counted() -> dict[str, float]:
        text = scrape(ray_cluster["metrics_url"])
        return {
            variant: metric_sum(text, "ray_graph_variant_requests_total", graph="recommend_ab", variant=variant, outcome="ok")
            for variant in sent
        } | {
            f"latency:{variant}": metric_sum(text, "ray_graph_variant_latency_ms_count", graph="recommend_ab", variant=variant)
            for variant in sent
        } | {
            f"scores:{version}": metric_sum(text, "ray_graph_model_scores_count", graph="recommend_ab", version=version)
            for version in ("1", "2")
        }

    deadline = time.monotonic() + 30
    while any((seen := counted())[v] < n for v, n in sent.items()) and time.monotonic() < deadline:
        time.sleep(1)
    for variant, count in sent.items():
        assert seen[variant] >= count > 0  # earlier tests of this module sent some too
        assert seen[f"latency:{variant}"] == seen[variant]
    # every request scores its 10 items with its variant's version, and the shadow's ensemble scores with both
    assert seen["scores:1"] >= 10 * sent["champion"] and seen["scores:2"] >= 10 * sent["challenger"]

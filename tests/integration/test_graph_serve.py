"""The declarative graphs under Serve (apps.graph:build): the configs in
configs/graphs/ deployed next to the session's apps, nodes inline and placed
apart as deployments of their own."""
from __future__ import annotations

import copy
import secrets
import time

import httpx
import pytest
import yaml

from local_stack.serve_configs import point_graph
from tests.servers import deploy, metric_sum, replicas, restore, scrape, wait_app, wait_http

pytestmark = pytest.mark.integration

ITEMS = list(range(1, 11))


def graph_app(path: str, triton, llm_url: str, llm_model: str, name: str | None = None) -> dict:
    """A graph config's application (the one named `name`, or its only graph
    app) with the test's Triton and chat app."""
    with open(path) as handle:
        (app,) = [a for a in yaml.safe_load(handle)["applications"]
                  if a["import_path"] == "apps.graph:build" and name in (None, a["name"])]
    return point_graph(app, triton.grpc_url, llm_url, llm_model)


def recommend_app(triton, chat_url: str, name: str, route_prefix: str) -> dict:
    """configs/local.yaml's recommend graph, renamed to run next to the session's."""
    app = graph_app("configs/local.yaml", triton, chat_url, "tiny-llama", name="recommend")
    app.update(name=name, route_prefix=route_prefix)
    app.pop("deployments", None)
    app["args"].pop("drift", None)  # one drift monitor, the session app's
    return app


@pytest.fixture(scope="module")
def graphs(serve_config, triton, recommend_url, chat_url):
    """The recommend graph with its ranker placed apart (its own deployment,
    2 replicas), ab.yaml all inline; both next to the session's apps."""
    recommend = recommend_app(triton, chat_url, "recommend-apart", "/graph/recommend")
    recommend["args"]["graph"]["nodes"]["ranker"].update(placement="deployment", num_replicas=2)
    ab = graph_app("configs/graphs/ab.yaml", triton, chat_url, "tiny-llama")
    ab["args"]["score_sample_ratio"] = 1.0  # every call's scores: the metrics test counts them
    config = copy.deepcopy(serve_config)
    config["applications"] += [recommend, ab]
    deploy(config)
    base = recommend_url.removesuffix("/recommend")
    for app in (recommend, ab):
        wait_app(app["name"], {"RUNNING"}, timeout_s=180)
        wait_http(f"{base}{app['route_prefix']}/readyz", timeout_s=60)
    yield {"recommend": f"{base}{recommend['route_prefix']}", "ab": f"{base}{ab['route_prefix']}", "app": recommend["name"]}
    restore(serve_config)


def test_placing_the_ranker_apart_changes_no_answer(graphs, recommend_url):
    body = {"user_id": 7, "item_ids": ITEMS, "k": 3, "explain": False}
    expected = httpx.post(recommend_url, json=body, timeout=10).json()  # the session's app: every node inline
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


def test_the_shadow_step_s_comparisons_are_on_rays_prometheus_endpoint(graphs, ray_cluster):
    """The A/B graph mirrors every request to its ensemble: each comparison's
    top-k agreement, score difference, rank distance and both latencies
    appear per graph and step, and the mirrored calls by outcome."""
    for user in range(40, 50):
        httpx.post(graphs["ab"], json={"user_id": user, "item_ids": ITEMS, "k": 3}, timeout=10).raise_for_status()
    labels = {"graph": "recommend_ab", "step": "ranker"}

    def seen() -> dict[str, float]:
        text = scrape(ray_cluster["metrics_url"])
        return {name: metric_sum(text, name, **labels) for name in (
            "ray_graph_shadow_topk_agreement_count", "ray_graph_shadow_score_diff_count",
            "ray_graph_shadow_rank_distance_count")} | {
            f"latency:{role}": metric_sum(text, "ray_graph_shadow_latency_ms_count", role=role, **labels)
            for role in ("primary", "candidate")} | {
            f"requests:{outcome}": metric_sum(text, "ray_graph_shadow_requests_total", outcome=outcome, **labels)
            for outcome in ("mirrored", "compared")} | {
            "agreement_sum": metric_sum(text, "ray_graph_shadow_topk_agreement_sum", **labels)}

    deadline = time.monotonic() + 30
    while (found := seen())["requests:compared"] < 10 and time.monotonic() < deadline:
        time.sleep(1)
    compared = found["requests:compared"]
    assert compared >= 10 and found["requests:mirrored"] >= compared
    for name in ("ray_graph_shadow_topk_agreement_count", "ray_graph_shadow_score_diff_count",
                 "ray_graph_shadow_rank_distance_count", "latency:primary", "latency:candidate"):
        assert found[name] >= 10, (name, found)  # one observation per comparison
    # an agreement in [0, 1] per comparison, and the ensemble of both versions mostly agrees with either
    assert 0 < found["agreement_sum"] <= found["ray_graph_shadow_topk_agreement_count"]


def test_one_request_is_one_trace_with_a_span_per_node_across_deployments(graphs, ray_cluster):
    """The caller's `traceparent` is followed: the ingress replica's span is its
    child, the graph's steps and nodes nest under it, the ranker, placed in
    its own deployment, continues the trace in its own replica, and so does
    the chat app the LLM node calls over HTTP. The request id the caller
    chose is on the spans of the graph's replicas."""
    from observability.tracing import read_spans, render_tree, span_tree

    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    request_id = f"trace-{trace_id[:12]}"
    headers = {"traceparent": f"00-{trace_id}-{caller_span}-01", "X-Request-ID": request_id}
    answer = httpx.post(graphs["recommend"], json={"user_id": 7, "item_ids": ITEMS, "k": 3}, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text

    wanted = {"graph.node explain", "replica_handle_request node:ranker run", "replica_handle_request LLMServer:tiny-llama __call__"}
    deadline = time.monotonic() + 30
    while True:
        spans = [s for s in read_spans(ray_cluster["spans_dir"]) if s["trace_id"] == trace_id]
        if wanted <= {s["name"] for s in spans}:
            break
        assert time.monotonic() < deadline, f"spans of the trace: {sorted(s['name'] for s in spans)}"
        time.sleep(0.5)
    (root,) = span_tree(spans, trace_id)
    print("\n" + render_tree([root]))
    assert root.name == "replica_handle_request GraphIngress __call__" and root.span["parent_span_id"] == caller_span
    steps = [child.name for child in root.children if child.name.startswith("graph.")]
    assert steps == ["graph.node features", "graph.node ranker", "graph.node ranking", "graph.switch explanation"]
    by_name = {node.name: node for _, node in root.walk()}
    ranker_side = [node.name for _, node in by_name["graph.node ranker"].walk()]
    assert "replica_handle_request node:ranker run" in ranker_side  # the hop to the ranker's own deployment
    switch = by_name["graph.switch explanation"]
    assert switch.span["attributes"]["graph.route"] == "cases[0]" and [c.name for c in switch.children] == ["graph.node explain"]
    # the LLM node's HTTP call to the chat app carries the trace (W3C traceparent): the engine's replica joins it
    assert [c.name for c in switch.children[0].children] == ["replica_handle_request LLMServer:tiny-llama __call__"]
    node_spans = [node.span for _, node in root.walk() if node.name.startswith("graph.node ")]
    assert {s["attributes"]["request.id"] for s in node_spans} == {request_id}
    assert by_name["replica_handle_request node:ranker run"].span["attributes"]["request_id"] == request_id
    assert all(s["status"] != "ERROR" for s in spans)

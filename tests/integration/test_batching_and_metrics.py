"""Under concurrent load the graph merges requests into shared Triton calls
(the ranker's `batch:`); every node's latency and errors show up on Ray's
Prometheus endpoint next to Serve's own metrics.

The counters are the session's, cumulative: each test reads them before its
own requests and asserts on the increase, so earlier tests' traffic can
neither make it pass nor fail."""
import asyncio
import time

import httpx

from tests.servers import metric_sum, scrape
import pytest

pytestmark = pytest.mark.integration

MODEL = {"model": "ranker", "version": "1"}
BURST = 96
ROWS = 20  # items per request of the burst
# Triton counts a request as it finishes it, possibly a moment after the answer
# has left: a scrape right after the burst may race the last few counts.
TRITON_METRICS_DEADLINE_S = 10
EXPORT_DEADLINE_S = 60


async def burst(url: str, n: int) -> list[int]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        responses = await asyncio.gather(
            *(
                client.post(url, json={"user_id": 1 + i % 50, "item_ids": list(range(1 + i, 1 + ROWS + i)), "k": 5, "explain": False})
                for i in range(n)
            )
        )
    return [r.status_code for r in responses]


def test_concurrent_requests_share_triton_calls(recommend_url, triton):
    before = scrape(triton.metrics_url)
    statuses = asyncio.run(burst(recommend_url, BURST))
    assert statuses == [200] * BURST

    def delta(after: str, name: str) -> float:
        return metric_sum(after, name, **MODEL) - metric_sum(before, name, **MODEL)

    deadline = time.monotonic() + TRITON_METRICS_DEADLINE_S
    after = scrape(triton.metrics_url)
    while delta(after, "nv_inference_count") < BURST * ROWS and time.monotonic() < deadline:
        time.sleep(0.5)
        after = scrape(triton.metrics_url)

    requests, executions, inferences = (delta(after, name) for name in ("nv_inference_request_success", "nv_inference_exec_count", "nv_inference_count"))
    assert inferences == BURST * ROWS, f"Triton scored {inferences:.0f} rows of this test's {BURST * ROWS}"
    assert requests < BURST, f"{BURST} graph requests made {requests:.0f} Triton requests: none shared a call"
    assert executions <= requests
    print(f"\n{BURST} graph requests -> {requests:.0f} Triton requests, {inferences:.0f} rows, {executions:.0f} model executions")


# What one request adds to Ray's endpoint, by series: (family, labels).
SERIES = {
    "features latency": ("ray_graph_node_latency_ms_count", {"node": "features"}),
    "ranker latency": ("ray_graph_node_latency_ms_count", {"node": "ranker"}),
    "ranking latency": ("ray_graph_node_latency_ms_count", {"node": "ranking"}),
    "ranker's +Inf bucket": ("ray_graph_node_latency_ms_bucket", {"node": "ranker", "le": "+Inf"}),
    "features' not_found errors": ("ray_graph_node_errors_total", {"node": "features", "error": "not_found"}),
}


def readings(text: str) -> dict[str, float]:
    return {name: metric_sum(text, family, graph="recommend", **labels) for name, (family, labels) in SERIES.items()}


def test_node_metrics_on_rays_prometheus_endpoint(recommend_url, ray_cluster):
    url = ray_cluster["metrics_url"]
    before = readings(scrape(url))
    answered, not_found = 3, 2  # distinct counts: a series counting the wrong requests shows
    for user in range(3, 3 + answered):
        httpx.post(recommend_url, json={"user_id": user, "item_ids": [1, 2, 3], "explain": False}, timeout=10).raise_for_status()
    for _ in range(not_found):
        assert httpx.post(recommend_url, json={"user_id": 3, "item_ids": [123_456]}, timeout=10).status_code == 404
    # Every request looks its features up (the unknown item fails there, as not_found);
    # only the answered ones reach the ranker and the ranking.
    expected = {"features latency": answered + not_found, "ranker latency": answered, "ranking latency": answered,
                "ranker's +Inf bucket": answered, "features' not_found errors": not_found}

    def increase(text: str) -> dict[str, float]:
        now = readings(text)
        return {name: now[name] - before[name] for name in SERIES}

    # Ray exports every few seconds: wait for this test's increase. At least,
    # not exactly: an earlier test's requests may still be on their way to the
    # endpoint (waiting for the series to stand still costs 13-26 s a run).
    deadline = time.monotonic() + EXPORT_DEADLINE_S
    text = scrape(url)
    while any(increase(text)[name] < count for name, count in expected.items()) and time.monotonic() < deadline:
        time.sleep(1)
        text = scrape(url)
    grown = increase(text)
    assert all(grown[name] >= count for name, count in expected.items()), f"increase {grown}, expected at least {expected}"
    assert "ray_serve_deployment_processing_latency_ms_bucket" in text  # Serve's own, same endpoint

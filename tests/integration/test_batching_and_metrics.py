"""Under concurrent load Triton batches requests; every node's latency and
errors show up on Ray's Prometheus endpoint next to Serve's own metrics."""
import asyncio
import time

import httpx

from tests.servers import metric_sum, scrape

MODEL = {"model": "ranker", "version": "1"}


async def burst(url: str, n: int) -> list[int]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        responses = await asyncio.gather(
            *(
                client.post(url, json={"user_id": 1 + i % 50, "item_ids": list(range(1 + i, 21 + i)), "k": 5, "explain": False})
                for i in range(n)
            )
        )
    return [r.status_code for r in responses]


def test_triton_batches_concurrent_requests(recommend_url, triton):
    before = scrape(triton.metrics_url)
    statuses = asyncio.run(burst(recommend_url, 96))
    after = scrape(triton.metrics_url)
    assert statuses == [200] * 96

    def delta(name):
        return metric_sum(after, name, **MODEL) - metric_sum(before, name, **MODEL)

    requests, executions, inferences = delta("nv_inference_request_success"), delta("nv_inference_exec_count"), delta("nv_inference_count")
    assert requests >= 96
    assert executions < requests, f"{requests} requests ran in {executions} executions: no dynamic batching"
    assert executions < inferences
    print(f"\n{requests:.0f} requests, {inferences:.0f} rows, {executions:.0f} model executions")


def test_node_metrics_on_rays_prometheus_endpoint(recommend_url, ray_cluster):
    httpx.post(recommend_url, json={"user_id": 3, "item_ids": [1, 2, 3], "explain": False}, timeout=10).raise_for_status()
    assert httpx.post(recommend_url, json={"user_id": 3, "item_ids": [123_456]}, timeout=10).status_code == 404

    def exported(text: str) -> list[str]:
        """What this test's requests should have put on the endpoint, missing from `text`."""
        missing = [f"latency of {node}" for node in ("features", "ranker", "ranking")
                   if metric_sum(text, "ray_graph_node_latency_ms_count", graph="recommend", node=node) <= 0]
        if metric_sum(text, "ray_graph_node_latency_ms_bucket", graph="recommend", node="ranker", le="+Inf") <= 0:
            missing.append("ranker's +Inf bucket")
        if metric_sum(text, "ray_graph_node_errors_total", graph="recommend", node="features", error="not_found") < 1:
            missing.append("features' not_found error")
        return missing

    # Wait for these very series, not for their families' names: a family
    # may be there before this request's sample (another graph's series, an
    # export taken before the 404; CI saw the errors family without it).
    deadline = time.monotonic() + 60
    text = scrape(ray_cluster["metrics_url"])
    while exported(text) and time.monotonic() < deadline:
        time.sleep(2)
        text = scrape(ray_cluster["metrics_url"])
    assert not exported(text)
    assert "ray_serve_deployment_processing_latency_ms_bucket" in text  # Serve's own, same endpoint

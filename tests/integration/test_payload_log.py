"""Payload logging under Serve, with the real sinks: the session's recommend
app logs every request to rotated files as configs/local.yaml ships it, and
a copy of the graph logs to a Redis stream, which stays bounded, and which
the graph outlives: Redis stopped, requests go on and the drops are counted;
Redis back, records flow again with no one touching the app."""
from __future__ import annotations

import copy
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis as redis_client

from cli import payloads as reader
from deployments.payloads.config import FileSink
from local_stack.redis_server import RedisServer
from local_stack.serve_configs import application
from tests.servers import deploy, metric_sum, restore, scrape, wait_app, wait_http

pytestmark = pytest.mark.integration

REQUEST = {"user_id": 7, "item_ids": list(range(1, 21)), "k": 3, "explain": False}
STREAM_MAXLEN = 20


def post_all(url: str, ids: list[str], clients: int = 4) -> list[int]:
    """POST the request once per id (as its X-Request-ID), `clients` at a time; the statuses."""
    def one(request_id: str) -> int:
        return httpx.post(url, json=REQUEST, headers={"X-Request-ID": request_id}, timeout=30).status_code

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, ids))


def wait_for(condition, timeout_s: float = 20, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


def test_every_request_of_a_bounded_run_is_in_the_file_sink_with_its_request_id(recommend_url, serve_config):
    payload_log = application(serve_config, "recommend")["args"]["payload_log"]
    sink = FileSink(**payload_log["sink"])
    run = uuid.uuid4().hex[:8]
    ids = [f"files-{run}-{n}" for n in range(40)]

    assert post_all(recommend_url, ids) == [200] * len(ids)

    def logged():
        found = {r["id"]: r for r in reader.file_records(sink, "recommend") if r["id"].startswith(f"files-{run}-")}
        return found if len(found) == len(ids) else None

    found = wait_for(logged)
    assert found is not None, f"{len(logged() or {})} of {len(ids)} requests in {Path(sink.directory) / 'recommend'}"
    record = found[ids[0]]
    assert (record["source"], record["data"]["status"], record["data"]["request"]) == ("graph/recommend", 200, REQUEST)
    assert record["data"]["models"]["ranker"]["name"] == "ranker"
    assert len(record["data"]["nodes"]["ranker"]["scores"]) == 20
    assert set(record["data"]["nodes"]["features"]["values"]) >= {"user_features__age", "item_features__price"}
    assert [item["item_id"] for item in record["data"]["response"]["items"]] == \
        [item["item_id"] for item in httpx.post(recommend_url, json=REQUEST, timeout=30).json()["items"]]


@pytest.fixture(scope="module")
def redis_logged(serve_config, recommend_url, stack):
    """A copy of the recommend graph logging to a Redis stream of at most
    STREAM_MAXLEN entries (exact trim), next to the session's apps."""
    server = RedisServer(log_file=stack.logs / "redis-payloads.log").start()
    app = copy.deepcopy(application(serve_config, "recommend"))
    app.update(name="recommend-redis", route_prefix="/payloads-redis")
    app.pop("deployments", None)
    app["args"].pop("drift", None)  # one drift monitor (the session's app) is enough
    app["args"]["payload_log"] = {"sink": {"kind": "redis", "url": f"redis://127.0.0.1:{server.port}/0",
                                           "stream": "payloads:test", "maxlen": STREAM_MAXLEN, "exact_trim": True,
                                           "timeout_s": 0.5}}
    config = copy.deepcopy(serve_config)
    config["applications"].append(app)
    deploy(config)
    base = recommend_url.removesuffix("/recommend")
    wait_app(app["name"], {"RUNNING"}, timeout_s=180)
    wait_http(f"{base}/payloads-redis/readyz", timeout_s=60)
    try:
        yield server, f"{base}/payloads-redis"
    finally:
        restore(serve_config)
        server.stop()


def stream_ids(port: int) -> list[str]:
    client = redis_client.Redis(port=port, socket_timeout=2)
    try:
        import json

        return [json.loads(fields[b"event"])["id"] for _, fields in client.xrange("payloads:test")]
    finally:
        client.close()


def test_with_redis_streams_the_records_are_in_the_stream_and_the_stream_is_bounded(redis_logged):
    server, url = redis_logged
    ids = [f"stream-{n}" for n in range(50)]
    assert post_all(url, ids, clients=1) == [200] * len(ids)  # one at a time: the stream's order is theirs
    tail = wait_for(lambda: (found := stream_ids(server.port)) and found[-1] == ids[-1] and found)
    assert tail == ids[-STREAM_MAXLEN:]  # the last 20, in order; the older ones trimmed


def test_redis_down_requests_answer_drops_are_counted_and_logging_resumes_by_itself(redis_logged, ray_cluster):
    server, url = redis_logged
    metrics_url = ray_cluster["metrics_url"]

    def dropped() -> float:
        return metric_sum(scrape(metrics_url), "ray_graph_payload_log_records_total",
                          graph="recommend", outcome="dropped_sink_error", application="recommend-redis")

    before = dropped()
    server.stop()
    assert post_all(url, [f"down-{n}" for n in range(10)]) == [200] * 10  # the sink's outage is not the requests'
    assert wait_for(lambda: dropped() >= before + 1, timeout_s=30), "no dropped_sink_error on Ray's Prometheus endpoint"

    server.start()  # the same port, an empty Redis
    ids = [f"back-{n}" for n in range(5)]

    def resumed() -> bool:
        post_all(url, ids, clients=1)
        return ids[-1] in stream_ids(server.port)

    assert wait_for(resumed, timeout_s=30, every_s=1.0), "records did not reach Redis again after it came back"

"""API keys, the body limit and request ids on a served graph (deployments.http.security,
switched on by the recommend app's `http:` args), through Serve's HTTP path."""
from __future__ import annotations

import copy
import secrets
import time

import httpx
import pytest

from tests.servers import deploy, metric_sum, restore, scrape, wait_app, wait_http

pytestmark = pytest.mark.integration

REQUEST = {"user_id": 5, "item_ids": [1, 2, 3, 4], "k": 2, "explain": False}


@pytest.fixture(scope="module")
def keyed_url(serve_config, recommend_url, tmp_path_factory):
    """The recommend graph again under /recommend-keys, with two named keys
    from files (as Kubernetes Secrets are mounted), `next` limited to 0.5
    requests/s with a burst of 3, and a 4 KiB body limit; like the cluster's
    apps it caps a caller's sampled traceparent at the tracing ratio (5 %)."""
    folder = tmp_path_factory.mktemp("keys")
    keys = {"primary": secrets.token_urlsafe(24), "next": secrets.token_urlsafe(24)}
    for name, value in keys.items():
        (folder / name).write_text(value + "\n")
    config = copy.deepcopy(serve_config)
    app = copy.deepcopy(config["applications"][0])
    app["name"], app["route_prefix"] = "recommend-keys", "/recommend-keys"
    app["args"]["http"] = {
        "api_keys": [{"name": "primary", "file": str(folder / "primary")},
                     {"name": "next", "file": str(folder / "next"), "rate_limit": {"requests_per_s": 0.5, "burst": 3}}],
        "max_body_bytes": 4096,
    }
    app["args"].pop("caller_sampling_ratio")  # the default: the Serve config's sampling_ratio
    config["applications"].append(app)
    deploy(config)
    wait_app("recommend-keys", {"RUNNING"}, timeout_s=180)
    url = recommend_url.removesuffix("/recommend") + "/recommend-keys"
    wait_http(f"{url}/readyz", timeout_s=60)
    yield url, keys
    restore(serve_config)


def test_health_is_open_and_everything_else_needs_a_key(keyed_url):
    url, _ = keyed_url
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    missing = httpx.post(url, json=REQUEST, timeout=10)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"]["code"] == "missing_api_key"
    wrong = httpx.post(url, json=REQUEST, headers={"Authorization": "Bearer not-a-key-of-this-app"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"


def test_readiness_is_open_but_its_details_need_a_key(keyed_url, recommend_url):
    url, keys = keyed_url
    anonymous = httpx.get(f"{url}/readyz", timeout=10)
    assert anonymous.status_code == 200
    assert anonymous.json() == {"ready": True, "checks": {"features": {"ready": True}, "ranker": {"ready": True}}}
    keyed = httpx.get(f"{url}/readyz", headers={"X-API-Key": keys["primary"]}, timeout=10).json()
    assert " version " in keyed["checks"]["ranker"]["detail"], keyed  # "ranker version 1 (@champion)"
    # the shipped local config has no keys: there every caller sees the details
    assert "detail" in httpx.get(f"{recommend_url}/readyz", timeout=10).json()["checks"]["ranker"]


def test_without_an_http_block_a_body_over_1_mib_is_refused_unread(recommend_url):
    huge = b'{"user_id": 1, "k": 1, "item_ids": [' + b"1," * 600_000 + b"1]}"
    answer = httpx.post(recommend_url, content=huge, headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large", answer.text
    assert httpx.post(recommend_url, json=REQUEST, timeout=10).status_code == 200


def test_both_named_keys_work_during_a_rotation(keyed_url):
    url, keys = keyed_url
    bearer = httpx.post(url, json=REQUEST, headers={"Authorization": f"Bearer {keys['primary']}"}, timeout=10)
    header = httpx.post(url, json=REQUEST, headers={"X-API-Key": keys["next"]}, timeout=10)
    assert bearer.status_code == 200 and len(bearer.json()["items"]) == 2
    assert header.status_code == 200 and header.json()["items"] == bearer.json()["items"]


def test_a_body_over_the_limit_gets_413_and_the_graph_keeps_answering(keyed_url):
    url, keys = keyed_url
    auth = {"Authorization": f"Bearer {keys['primary']}"}
    too_big = dict(REQUEST, item_ids=list(range(1, 2000)))
    answer = httpx.post(url, json=too_big, headers=auth, timeout=10)
    assert answer.status_code == 413
    assert "4096" in answer.json()["error"]["message"]
    assert httpx.post(url, json=REQUEST, headers=auth, timeout=10).status_code == 200


def test_the_request_id_comes_back_on_answers_and_rejections(keyed_url):
    url, keys = keyed_url
    ok = httpx.post(url, json=REQUEST, headers={"X-API-Key": keys["primary"], "X-Request-ID": "req-abc.123"}, timeout=10)
    rejected = httpx.post(url, json=REQUEST, headers={"X-Request-ID": "req-def.456"}, timeout=10)
    assert "req-abc.123" in ok.headers.get_list("x-request-id")
    assert "req-def.456" in rejected.headers.get_list("x-request-id")


def test_a_key_over_its_rate_gets_429_and_the_other_key_does_not(keyed_url, ray_cluster):
    url, keys = keyed_url
    limited = [httpx.post(url, json=REQUEST, headers={"X-API-Key": keys["next"]}, timeout=10) for _ in range(6)]
    refused = [r for r in limited if r.status_code == 429]
    assert refused and all(r.status_code in (200, 429) for r in limited), [r.status_code for r in limited]
    assert refused[0].headers["retry-after"] == "2"
    assert refused[0].json()["error"]["code"] == "rate_limit_exceeded" and "'next'" in refused[0].json()["error"]["message"]
    assert [httpx.post(url, json=REQUEST, headers={"X-API-Key": keys["primary"]}, timeout=10).status_code for _ in range(4)] == [200] * 4
    deadline = time.monotonic() + 60  # Ray exports metrics every few seconds
    while time.monotonic() < deadline:
        text = scrape(ray_cluster["metrics_url"])
        if metric_sum(text, "ray_api_key_requests_total", app="recommend-keys", key="next", outcome="rate_limited") >= len(refused):
            break
        time.sleep(2)
    assert metric_sum(text, "ray_api_key_requests_total", app="recommend-keys", key="next", outcome="rate_limited") >= len(refused)
    assert metric_sum(text, "ray_api_key_requests_total", app="recommend-keys", key="primary", outcome="accepted") >= 4
    assert keys["next"] not in text and keys["primary"] not in text, "metrics name keys, never their values"


def test_grpc_calls_need_the_same_keys_as_metadata_and_share_their_rate(keyed_url, serve_config):
    """The Open Inference Protocol over gRPC (Serve's gRPC proxy) checks the
    app's keys in the call's `authorization` (or `x-api-key`) metadata:
    none or a wrong one is UNAUTHENTICATED; a key spent over HTTP is spent
    for gRPC too (one bucket per key in the replica)."""
    import grpc
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    url, keys = keyed_url
    client = triton.InferenceServerClient(f"127.0.0.1:{serve_config['grpc_options']['port']}")
    app = {"application": "recommend-keys"}
    inputs = [triton.InferInput("user_id", [1], "INT64"), triton.InferInput("item_ids", [2], "INT64")]
    inputs[0].set_data_from_numpy(np.array([5], dtype=np.int64))
    inputs[1].set_data_from_numpy(np.array([1, 2], dtype=np.int64))

    def status(headers: dict) -> str:
        try:
            client.infer("recommend", inputs, headers={**app, **headers}, client_timeout=30)
        except InferenceServerException as error:
            return error.status()
        return str(grpc.StatusCode.OK)

    try:
        assert status({}) == str(grpc.StatusCode.UNAUTHENTICATED)
        assert status({"authorization": "Bearer not-a-key-of-this-app"}) == str(grpc.StatusCode.UNAUTHENTICATED)
        assert status({"authorization": f"Bearer {keys['primary']}"}) == str(grpc.StatusCode.OK)
        assert status({"x-api-key": keys["primary"]}) == str(grpc.StatusCode.OK)
        spent = [httpx.post(url, json=REQUEST, headers={"X-API-Key": keys["next"]}, timeout=10).status_code for _ in range(5)]
        assert 429 in spent, spent
        assert status({"authorization": f"Bearer {keys['next']}"}) == str(grpc.StatusCode.RESOURCE_EXHAUSTED)
    finally:
        client.close()


def test_a_callers_sampled_traceparent_traces_no_more_than_the_ratio(keyed_url, ray_cluster):
    """Forty requests say "sampled" in their traceparent. Serve's proxy and
    replica follow the caller (their spans are there for every one), but the
    app traces about 5 % of them (2 expected): the others run sampled out, no
    graph span is made. The shipped local app (ratio 1.0) traces each one
    (test_graph_serve's trace test)."""
    from observability.tracing import read_spans

    url, keys = keyed_url
    trace_ids = [secrets.token_hex(16) for _ in range(40)]
    for trace_id in trace_ids:
        headers = {"X-API-Key": keys["primary"], "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        assert httpx.post(url, json=REQUEST, headers=headers, timeout=10).status_code == 200
    wanted, deadline = set(trace_ids), time.monotonic() + 30
    while True:  # the replica's request span ends last, after any graph span of its trace
        spans = [span for span in read_spans(ray_cluster["spans_dir"]) if span["trace_id"] in wanted]
        served = {span["trace_id"] for span in spans if span["name"] == "replica_handle_request GraphIngress __call__"}
        if served == wanted or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert served == wanted, f"Serve followed {len(served)} of the 40 callers"
    traced = {span["trace_id"] for span in spans if span["name"].startswith("graph.node ")}
    print(f"\n{len(traced)} of 40 caller-sampled requests traced past the proxy (ratio 0.05)")
    assert len(traced) <= 10  # Binomial(40, 0.05) > 10: p < 1e-5; were callers followed, all 40


FLOOD = """
import http.client, sys, time, urllib.parse
url, rate = urllib.parse.urlsplit(sys.argv[1]), float(sys.argv[2])
sent, started = 0, time.monotonic()
connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
try:
    while True:
        try:
            connection.request("GET", url.path)
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
        except (http.client.HTTPException, ConnectionError):
            connection.close()  # the server closed a kept-alive connection: the next request opens another
            connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            continue
        sent += 1
        time.sleep(max(0.0, sent / rate - (time.monotonic() - started)))
except KeyboardInterrupt:
    print(sent)
"""


def test_a_flood_of_readiness_probes_calls_no_backend_and_keyed_requests_still_answer(keyed_url, ray_cluster):
    """Probes read the cached result: under a bounded flood of /readyz (50 a
    second from another process, 50 times a kubelet's rate) the ranker's
    backend is still checked about once a second (counted where the checks
    call the backends, so a probe that reached them would show), and every
    keyed request sent meanwhile answers 200. The keyed p99s, quiet and
    flooded, are printed, not judged: on these shared 2-core hosts the
    alternating rounds drew p99s 28-78 % apart in three of five CI runs, while
    the check count never moved, so a latency bound here tests the host."""
    import signal
    import statistics
    import subprocess
    import sys

    url, keys = keyed_url
    auth = {"X-API-Key": keys["primary"]}

    def keyed_timings(n: int = 300) -> list[float]:
        timings = []
        with httpx.Client(timeout=10) as client:
            for _ in range(n):
                started = time.perf_counter()
                assert client.post(url, json=REQUEST, headers=auth).status_code == 200
                timings.append(time.perf_counter() - started)
        return timings

    def flooded(n: int = 300) -> tuple[list[float], int]:
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, f"{url}/readyz", "50"], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(1)
            timings = keyed_timings(n)
        finally:
            flood.send_signal(signal.SIGINT)
            sent = int(flood.communicate(timeout=10)[0] or 0)
        return timings, sent

    def p99(timings: list[float]) -> float:
        return statistics.quantiles(timings, n=100)[98]

    def checks_run() -> float:
        text = scrape(ray_cluster["metrics_url"])
        return metric_sum(text, "ray_graph_node_readiness_checks_total", application="recommend-keys", node="ranker")

    keyed_timings(50)  # warm
    checks_before, started = checks_run(), time.monotonic()
    quiet, loud, probes = [], [], 0
    for _ in range(3):
        quiet += keyed_timings(200)
        timings, sent = flooded(200)
        loud += timings
        probes += sent
    time.sleep(12)  # Ray exports metrics every few seconds
    window_s = time.monotonic() - started
    checks = checks_run() - checks_before
    print(f"\nkeyed p99 quiet {p99(quiet) * 1000:.1f} ms, {p99(loud) * 1000:.1f} ms under {probes} probes; "
          f"readiness checks of the ranker in those {window_s:.0f} s: {checks:.0f}")
    # About one a second, give or take Ray's export period; were probes checking, there would be one per probe.
    bound = 1.5 * window_s + 10
    assert probes > 3 * bound, f"only {probes} probes: the flood cannot tell"
    assert checks <= bound, f"{checks} readiness checks in {window_s:.0f} s under {probes} probes: probes reach the backends"

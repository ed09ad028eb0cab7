"""Backend failures are bounded and clear; bad configs never reach a replica.

These tests stop, freeze and restart the session's Triton, and deploy extra
applications next to the recommend graph; each leaves the session as it was.
"""
import copy
import os
import signal
import time

import httpx
import pytest
from ray import serve

from tests.servers import deploy, free_port, restore, wait_app, wait_http, wait_restarted

pytestmark = pytest.mark.integration

REQUEST = {"user_id": 5, "item_ids": [1, 2, 3, 4], "k": 2, "explain": False}
# On top of the ranker's configured timeout: Serve's HTTP hop and the feature
# lookup before the ranker, on a busy 2-core host.
HOP_TOLERANCE_S = 1.0


def timed_post(url: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(url, json=REQUEST, timeout=30)
    return response, time.monotonic() - started


def ranker_timeout(serve_config) -> float:
    return serve_config["applications"][0]["args"]["graph"]["nodes"]["ranker"]["config"]["timeout_s"]


def wait_recovered(url: str, timeout_s: float = 30) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if httpx.post(url, json=REQUEST, timeout=10).status_code == 200:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"no 200 within {timeout_s} s of Triton coming back")


def test_triton_stopped_gives_503_quickly_and_recovers(recommend_url, triton, serve_config):
    triton.stop()
    try:
        response, elapsed = timed_post(recommend_url)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "backend_unavailable" and error["backend"] == "triton"
        assert response.headers["retry-after"] == "1"
        assert elapsed < ranker_timeout(serve_config) + HOP_TOLERANCE_S
        ready = wait_http(f"{recommend_url}/readyz", timeout_s=15, status=503)  # refreshed every second
        checks = ready.json()["checks"]
        assert checks["ranker"]["ready"] is False and checks["features"]["ready"] is True
    finally:
        triton.start()
    recovered_in = wait_recovered(recommend_url)
    print(f"\nrecovered {recovered_in:.2f} s after Triton was ready again")
    wait_http(f"{recommend_url}/readyz", timeout_s=15)


def test_a_crashed_triton_is_restarted_and_readiness_says_why_meanwhile(recommend_url, triton):
    """The local Triton dies (SIGSEGV, as its python backend once did): its
    supervisor restarts it after a backoff; meanwhile /readyz names the
    crash; then the graph answers again by itself."""
    from pathlib import Path

    restarts = triton.restarts
    regions = {p.name for p in Path("/dev/shm").glob(f"{triton.shm_prefix}*")}
    assert regions, "the python backend's shared memory is not under this server's prefix"
    os.kill(triton.process.pid, signal.SIGSEGV)
    details = []

    def readiness() -> None:
        ready = httpx.get(f"{recommend_url}/readyz", timeout=10)
        if ready.status_code == 503:
            details.append(ready.json()["checks"]["ranker"]["detail"])

    wait_restarted(triton, restarts, while_waiting=readiness)
    assert any("local supervisor: triton restarting after signal 11 (SIGSEGV)" in d for d in details), details
    left = regions & {p.name for p in Path("/dev/shm").glob(f"{triton.shm_prefix}*")}
    assert not left, f"the dead server's shared memory is still there: {left}"
    wait_recovered(recommend_url)
    wait_http(f"{recommend_url}/readyz", timeout_s=15)


def test_frozen_triton_times_out_within_the_configured_bound(recommend_url, triton, serve_config):
    """A Triton that accepts connections but never answers (SIGSTOP)."""
    os.kill(triton.process.pid, signal.SIGSTOP)
    try:
        response, elapsed = timed_post(recommend_url)
    finally:
        os.kill(triton.process.pid, signal.SIGCONT)
    assert response.status_code == 503
    assert response.json()["error"] == {
        "code": "backend_timeout",
        "message": f"triton did not answer within {ranker_timeout(serve_config):g} s",
        "backend": "triton",
        "timeout_s": ranker_timeout(serve_config),
    }
    assert ranker_timeout(serve_config) <= elapsed < ranker_timeout(serve_config) + HOP_TOLERANCE_S
    wait_recovered(recommend_url)


def extra_app(serve_config, name: str, ranker: dict | None = None, **args_update) -> dict:
    """The session's recommend graph again under `name`, its ranker's config
    updated with `ranker` and its args with `args_update`."""
    app = copy.deepcopy(serve_config["applications"][0])
    app["name"], app["route_prefix"] = name, f"/{name}"
    app["args"]["graph"]["nodes"]["ranker"]["config"].update(ranker or {})
    app["args"].update(args_update)
    return app


@pytest.fixture
def restore_config(serve_config, recommend_url):
    yield
    restore(serve_config)


def test_bad_config_fails_at_build_time_naming_the_key(serve_config, recommend_url, restore_config):
    config = copy.deepcopy(serve_config)
    config["applications"].append(extra_app(serve_config, "broken", ranker={"timout_s": 2}))
    deploy(config)
    status = wait_app("broken", {"DEPLOY_FAILED"}, timeout_s=60)
    assert "graph.nodes.ranker.triton_model.config.timout_s" in status.message
    assert "Extra inputs are not permitted" in status.message
    assert serve.status().applications["recommend"].status == "RUNNING"
    assert httpx.post(recommend_url, json=REQUEST, timeout=10).status_code == 200


def test_replica_whose_backend_stays_gone_is_replaced(serve_config, deployed, recommend_url, restore_config):
    config = copy.deepcopy(serve_config)
    orphan = extra_app(serve_config, "orphan", ranker={"url": f"127.0.0.1:{free_port()}"}, unhealthy_after_s=2)
    orphan["deployments"][0].update(health_check_period_s=1, health_check_timeout_s=5)
    config["applications"].append(orphan)
    deploy(config)
    wait_app("orphan", {"RUNNING"}, timeout_s=120)
    first = wait_http(f"{deployed}/orphan/healthz").json()["replica"]
    assert httpx.get(f"{deployed}/orphan/readyz", timeout=10).status_code == 503
    deadline = time.monotonic() + 90
    replica = first
    while replica == first and time.monotonic() < deadline:
        time.sleep(1)
        try:
            replica = httpx.get(f"{deployed}/orphan/healthz", timeout=5).json().get("replica", first)
        except (httpx.HTTPError, ValueError):
            pass
    assert replica != first, "Serve kept the replica whose backend never came back"
    assert httpx.post(recommend_url, json=REQUEST, timeout=10).status_code == 200

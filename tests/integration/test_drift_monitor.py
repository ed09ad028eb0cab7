"""Drift detection under Serve, on the session's recommend graph as
configs/local.yaml ships it: the logged requests feed the app's drift
monitor, which compares the latest 300 with the ranker version's training
sample (its MLflow artifact). Traffic in the training mix leaves the flag
off; the demo's shifted user mix (local_stack/traffic.py) turns it on, on
Ray's Prometheus endpoint too; the training mix again turns it off."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from local_stack import traffic
from tests.servers import metric_sum, scrape

pytestmark = pytest.mark.integration

WINDOW = 300
REQUESTS = WINDOW + 30  # the whole window replaced by this mix


class Monitor:
    """Calls to the recommend app's DriftMonitor deployment. The session runs
    Serve's throughput settings, whose handle routes on the loop it was made
    in: one loop, in a thread of its own, for the module's calls."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="drift-monitor-calls", daemon=True)
        self.thread.start()

    def call(self, method: str) -> dict:
        async def go() -> dict:
            from ray import serve

            handle = serve.get_deployment_handle("DriftMonitor", app_name="recommend")
            return await getattr(handle, method).remote()

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def monitor(recommend_url):
    calls = Monitor()
    yield calls
    calls.close()


def window_of(mix: str, seed: int, url: str, data, monitor: Monitor) -> dict:
    """Send REQUESTS of the mix, wait until the monitor has their rows, check now."""
    received = monitor.call("status")["received"]
    statuses = asyncio.run(traffic.send(url, traffic.bodies(mix, REQUESTS, data, seed)))
    assert statuses == {200: REQUESTS}, statuses
    deadline = time.monotonic() + 30  # the replicas send their rows every 2 s
    while monitor.call("status")["received"] < received + REQUESTS and time.monotonic() < deadline:
        time.sleep(0.5)
    return monitor.call("check_now")


def flag(metrics_url: str) -> float:
    return metric_sum(scrape(metrics_url), "ray_graph_drift_detected", graph="recommend")


def test_the_training_mix_leaves_the_flag_off_and_a_shifted_user_mix_turns_it_on(recommend_url, stack, monitor, ray_cluster):
    normal = window_of("normal", 1, recommend_url, stack.data, monitor)
    assert normal["window"] == WINDOW and normal["checks"].get("failed", 0) == 0, normal
    assert normal["verdict"]["drifted"] is False, normal["verdict"]
    assert normal["model"] == "ranker" and normal["version"]

    shifted = window_of("shifted", 2, recommend_url, stack.data, monitor)
    verdict = shifted["verdict"]
    assert verdict["drifted"] is True and verdict["share"] >= 0.3, verdict
    drifted = {name for name, column in verdict["columns"].items() if column["drifted"]}
    assert {"user_features__age", "user_features__taste_0"} <= drifted, drifted
    assert sum(name.startswith("item_features__") for name in drifted) <= 2, drifted  # the items were not shifted (5 % each by chance)
    deadline = time.monotonic() + 30
    while flag(ray_cluster["metrics_url"]) != 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert flag(ray_cluster["metrics_url"]) == 1
    text = scrape(ray_cluster["metrics_url"])
    assert metric_sum(text, "ray_graph_feature_drifted", graph="recommend", feature="user_features__age") == 1
    assert metric_sum(text, "ray_graph_drift_share", graph="recommend") >= 0.3
    # Still exported long after the check (Ray drops a gauge ~20 s after its
    # last set; the monitor sets it again every few seconds), so an alert's
    # `for: 5m` sees an unbroken series.
    seen = []
    for _ in range(8):
        time.sleep(5)
        seen.append(flag(ray_cluster["metrics_url"]))
    assert seen == [1] * 8, seen

    back = window_of("normal", 3, recommend_url, stack.data, monitor)
    assert back["verdict"]["drifted"] is False, back["verdict"]

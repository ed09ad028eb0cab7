"""Serve replica autoscaling of a graph deployment, for real: under load the
graph ingress scales from min to max replicas, and back when the load stops,
with Serve's default policy and with the queue-depth policy
(deployments/autoscaling.py). No request fails on the way."""
from __future__ import annotations

import asyncio
import copy
import threading
import time

import httpx
import pytest

from local_stack.serve_configs import explanations_off
from tests.integration.test_graph_serve import recommend_app
from tests.servers import deploy, replicas, restore, wait_app

pytestmark = pytest.mark.integration

REQUEST = {"user_id": 9, "item_ids": list(range(1, 21)), "k": 5, "explain": False}
KEY = "autoscale#GraphIngress"
REQUEST_TIMEOUT_S = 30
QUEUE_DEPTH = {"policy_function": "deployments.autoscaling:QueueDepthPolicy", "policy_kwargs": {"per_replica": 2}}


class Load:
    """Closed-loop clients posting to `url` in a background thread until stopped.

    Every request's outcome is kept: its status in `statuses` (0: no HTTP
    answer) and, for each non-200, "<status> <body start>" or "0 <exception
    type>: ..." in `failures`. Anything else that ends the load (a bug, an
    unexpected exception) is re-raised, named, when the block exits."""

    def __init__(self, url: str, concurrency: int):
        self.url, self.concurrency = url, concurrency
        self.statuses: list[int] = []
        self.failures: list[str] = []  # "<status> <body start>" of each non-200, in order
        self.crash: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as error:  # noqa: BLE001 (re-raised by __exit__)
            self.crash = error

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=httpx.Limits(max_connections=self.concurrency)) as client:

            async def worker() -> None:
                while not self._stop.is_set():
                    try:
                        response = await client.post(self.url, json=REQUEST)
                    except httpx.HTTPError as error:  # a failed request: counted, and the load goes on
                        self.statuses.append(0)
                        self.failures.append(f"0 {type(error).__name__}: {error}")
                        continue
                    self.statuses.append(response.status_code)
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text[:300]}")

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT_S + 30)  # the requests in flight end by their timeout
        if self._thread.is_alive():
            problem = f"the load on {self.url} did not stop"
        elif self.crash is not None:
            problem = f"the load on {self.url} died: {type(self.crash).__name__}: {self.crash}"
        else:
            return
        if exc is not None:
            exc.add_note(problem)  # likely why the block failed: keep both
        else:
            raise AssertionError(problem) from self.crash

    def failed(self) -> str:
        """For an assertion message: how many failed, and the first few."""
        return f"{len(self.failures)} of {len(self.statuses)} requests failed: {self.failures[:5]}"


def wait_replicas(count: int, timeout_s: float, key: str = KEY) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if len(replicas().get(key, ())) == count:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"{key}: {len(replicas().get(key, ()))} replicas, not {count}, after {timeout_s} s")


@pytest.mark.parametrize(
    "policy, target_ongoing_requests",
    [
        (None, 2),
        # A target the default policy would never scale for at this load: only the backlog can.
        (QUEUE_DEPTH, 1000),
    ],
    ids=["serve-default-policy", "queue-depth-policy"],
)
def test_a_graph_deployment_scales_out_under_load_and_back_when_it_stops(policy, target_ongoing_requests, serve_config, deployed, recommend_url,
                                                                       chat_url):
    # chat_url: the session's vLLM engine is up first. It starts in the
    # background, and its start took both cores from Triton long enough for
    # four ranker calls to time out (CI17): this test asserts that no request
    # fails, so the only load here must be its own.
    config = copy.deepcopy(serve_config)
    app = copy.deepcopy(config["applications"][0])
    app["name"], app["route_prefix"] = "autoscale", "/autoscale"
    explanations_off(app)
    autoscaling = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": target_ongoing_requests,
                   "upscale_delay_s": 1, "downscale_delay_s": 5, "metrics_interval_s": 1, "look_back_period_s": 2}
    if policy:
        autoscaling["policy"] = policy
    app["deployments"] = [{"name": "GraphIngress", "max_ongoing_requests": 4, "autoscaling_config": autoscaling}]
    config["applications"].append(app)
    deploy(config)
    try:
        wait_app("autoscale", {"RUNNING"}, timeout_s=120)
        assert len(replicas()[KEY]) == 1
        with Load(f"{deployed}/autoscale", concurrency=16) as load:
            up_s = wait_replicas(2, timeout_s=120)
            wait_app("autoscale", {"RUNNING"}, timeout_s=60)
            time.sleep(2)  # both replicas serve under load
        down_s = wait_replicas(1, timeout_s=120)
        print(f"\n{len(load.statuses)} requests; 2 replicas after {up_s:.1f} s of load, 1 again {down_s:.1f} s after it stopped")
        assert load.statuses and set(load.statuses) == {200}, load.failed()
    finally:
        restore(serve_config)


def test_a_graphs_triton_node_scales_on_its_queue(serve_config, deployed, triton, chat_url):
    """The recommend graph with its Triton node placed apart: that node's own
    deployment scales on its backlog (QueueDepthPolicy), the rest stays put."""
    app = recommend_app(triton, chat_url, "queue", "/graph/queue")
    app["args"]["graph"]["nodes"]["ranker"].update(
        placement="deployment",
        max_ongoing_requests=2,
        autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1000,
                            "upscale_delay_s": 1, "downscale_delay_s": 5, "metrics_interval_s": 1, "look_back_period_s": 2,
                            "policy": QUEUE_DEPTH},
    )
    config = copy.deepcopy(serve_config)
    config["applications"].append(app)
    deploy(config)
    key = "queue#node:ranker"
    try:
        wait_app("queue", {"RUNNING"}, timeout_s=120)
        # The ingress's start-up calls (queued while the node's replica starts) may scale it first: let it settle.
        wait_replicas(1, timeout_s=60, key=key)
        with Load(f"{deployed}/graph/queue", concurrency=16) as load:
            up_s = wait_replicas(2, timeout_s=120, key=key)
            time.sleep(2)
        down_s = wait_replicas(1, timeout_s=120, key=key)
        print(f"\n{len(load.statuses)} requests; Triton node: 2 replicas after {up_s:.1f} s of load, 1 again {down_s:.1f} s after it stopped")
        assert load.statuses and set(load.statuses) == {200}, load.failed()
        assert len(replicas()["queue#GraphIngress"]) == 1
    finally:
        restore(serve_config)

"""Registry-driven rollouts: a graph's model node follows its MLflow alias
(`alias_poll_s`). Moving the alias rolls the running graph to the new
version without a redeploy, under load, with no failed or mixed request; an
alias moved to a version Triton does not serve is refused and the old
version keeps serving. The registry is a copy of the local stack's, so the
alias moves here touch nothing else."""
from __future__ import annotations

import copy
import threading
import time
from typing import NamedTuple

import httpx
import pytest

from tests.integration.test_graph_serve import recommend_app
from tests.servers import deploy, registry_copy, restore, wait_app, wait_http, wait_readiness

pytestmark = pytest.mark.integration

ALIAS, POLL_S = "rollout", 1.0
BODY = {"user_id": 7, "item_ids": list(range(1, 11)), "k": 3, "explain": False}


@pytest.fixture(scope="module")
def registry(stack, tmp_path_factory):
    return registry_copy(stack, tmp_path_factory.mktemp("registry"), {ALIAS: "1"})


@pytest.fixture(scope="module")
def rollout_url(serve_config, triton, recommend_url, chat_url, registry):
    _, uri = registry
    app = recommend_app(triton, chat_url, "rollout", "/graph/rollout")
    app["args"]["graph"]["nodes"]["ranker"]["config"].update(alias=ALIAS, registry_uri=uri, alias_poll_s=POLL_S)
    config = copy.deepcopy(serve_config)
    config["applications"].append(app)
    deploy(config)
    wait_app("rollout", {"RUNNING"}, timeout_s=180)
    url = recommend_url.removesuffix("/recommend") + "/graph/rollout"
    wait_http(f"{url}/readyz", timeout_s=60)
    yield url
    restore(serve_config)


def steady_answer(url: str, version: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = httpx.post(url, json=BODY, timeout=10).json()
        if answer["model"]["version"] == version:
            return answer
        time.sleep(0.2)
    raise TimeoutError(f"version {version} never answered")


# From the alias move to the first answer of the new version: up to one poll
# interval, then the registry read (SQLite), Triton's readiness check of the
# version (itself bounded by the node's 1 s timeout) and that answer's round
# trip; 2 s covers them on a busy 2-core host.
ROLLOUT_TOLERANCE_S = 2.0
WORKERS = 4


class Outcome(NamedTuple):
    started: float
    ended: float
    status: int  # 0: no HTTP answer (see `detail`)
    answer: dict | None  # the JSON body, None when there was none
    detail: str  # what went wrong: "<exception type>: ..." or the start of a non-JSON body


def post_until(url: str, stop: threading.Event, outcomes: list[Outcome], crashes: list[str]) -> None:
    """Closed-loop load: every request's outcome is recorded, a failed one too;
    anything unexpected ends the thread and lands in `crashes` for the test."""
    try:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = http.post(url, json=BODY)
                except httpx.HTTPError as error:
                    outcomes.append(Outcome(started, time.monotonic(), 0, None, f"{type(error).__name__}: {error}"))
                    continue
                ended = time.monotonic()
                try:
                    outcomes.append(Outcome(started, ended, response.status_code, response.json(), ""))
                except ValueError:
                    outcomes.append(Outcome(started, ended, response.status_code, None, f"not JSON: {response.text[:200]!r}"))
    except Exception as error:  # noqa: BLE001 (named in the test's failure)
        crashes.append(f"{type(error).__name__}: {error}")


def test_moving_the_alias_rolls_the_running_graph_without_a_failed_or_mixed_request(rollout_url, registry):
    client, _ = registry
    before = steady_answer(rollout_url, "1")
    outcomes: list[Outcome] = []
    crashes: list[str] = []
    stop = threading.Event()
    workers = [threading.Thread(target=post_until, args=(rollout_url, stop, outcomes, crashes), daemon=True) for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    time.sleep(2)
    moved_at = time.monotonic()
    client.set_registered_model_alias("ranker", ALIAS, "2")
    time.sleep(POLL_S * 3 + 2)
    stop.set()
    for worker in workers:
        worker.join(15)  # the client's 10 s timeout ends any request in flight
    after = steady_answer(rollout_url, "2")

    assert not crashes, f"load threads died: {crashes}"
    assert not any(worker.is_alive() for worker in workers), "a load thread is still running"
    failed = [o for o in outcomes if o.status != 200 or o.answer is None]
    assert outcomes and not failed, f"{len(failed)} of {len(outcomes)} requests failed, e.g. {[(o.status, o.detail) for o in failed[:5]]}"
    assert before["items"] != after["items"], "the two versions rank differently (else this test shows nothing)"
    expected = {"1": before["items"], "2": after["items"]}
    for outcome in outcomes:  # each answer is one version's, whole: ranking and named version agree
        answer = outcome.answer
        assert answer["model"] == {"name": "ranker", "version": answer["model"]["version"], "alias": ALIAS}
        assert answer["items"] == expected[answer["model"]["version"]]
    first_new = min(o.ended for o in outcomes if o.answer["model"]["version"] == "2")
    assert first_new - moved_at < POLL_S + ROLLOUT_TOLERANCE_S, "the new version serves within the poll interval"
    # Once version 2 has answered, every request sent after that is version 2's (no way back).
    assert all(o.answer["model"]["version"] == "2" for o in outcomes if o.started > first_new)
    print(f"{len(outcomes)} requests, all 200; version 2 served {first_new - moved_at:.2f} s after the alias moved")


def test_an_alias_on_a_version_triton_lacks_is_refused_and_the_old_one_keeps_serving(rollout_url, registry):
    client, _ = registry
    client.set_registered_model_alias("ranker", ALIAS, "1")
    steady_answer(rollout_url, "1")
    tags = client.get_model_version("ranker", "1").tags
    missing = client.create_model_version("ranker", source="file:///nowhere/ranker", tags=tags)
    client.set_registered_model_alias("ranker", ALIAS, missing.version)
    time.sleep(POLL_S * 3)

    answer = httpx.post(rollout_url, json=BODY, timeout=10)
    assert answer.status_code == 200 and answer.json()["model"]["version"] == "1"
    held = wait_readiness(f"{rollout_url}/readyz", lambda r: "rollout held" in r.json()["checks"]["ranker"]["detail"])
    ranker = held.json()["checks"]["ranker"]
    assert ranker["ready"]
    assert f"points to version {missing.version}, which triton at " in ranker["detail"]  # the node's `server`
    assert "still serving version 1" in ranker["detail"]

    client.set_registered_model_alias("ranker", ALIAS, "2")  # a served version again: the rollout proceeds
    steady_answer(rollout_url, "2", timeout_s=POLL_S * 5)
    wait_readiness(f"{rollout_url}/readyz", lambda r: "rollout held" not in r.json()["checks"]["ranker"]["detail"])

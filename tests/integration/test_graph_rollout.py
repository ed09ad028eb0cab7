"""Registry-driven rollouts: a graph's model node follows its MLflow alias
(`alias_poll_s`). Moving the alias rolls the running graph to the new
version without a redeploy, under load, with no failed or mixed request; an
alias moved to a version Triton does not serve is refused and the old
version keeps serving. The registry is a copy of the local stack's, so the
alias moves here touch nothing else."""
from __future__ import annotations

import copy
import shutil
import threading
import time

import httpx
import pytest
from mlflow import MlflowClient

from tests.integration.test_graph_serve import recommend_app
from tests.servers import deploy, restore, wait_app, wait_http

ALIAS, POLL_S = "rollout", 1.0
BODY = {"user_id": 7, "item_ids": list(range(1, 11)), "k": 3, "explain": False}


@pytest.fixture(scope="module")
def registry(stack, tmp_path_factory):
    path = tmp_path_factory.mktemp("registry") / "mlflow.db"
    shutil.copy(stack.mlflow_db, path)
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_registered_model_alias("ranker", ALIAS, "1")
    return client, uri


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


def test_moving_the_alias_rolls_the_running_graph_without_a_failed_or_mixed_request(rollout_url, registry):
    client, _ = registry
    before = steady_answer(rollout_url, "1")
    answers, stop = [], threading.Event()

    def load():
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                response = http.post(rollout_url, json=BODY)
                answers.append((time.monotonic(), response.status_code, response.json()))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(2)
    moved_at = time.monotonic()
    client.set_registered_model_alias("ranker", ALIAS, "2")
    time.sleep(POLL_S * 3 + 2)
    stop.set()
    for worker in workers:
        worker.join()
    after = steady_answer(rollout_url, "2")

    assert before["items"] != after["items"], "the two versions rank differently (else this test shows nothing)"
    assert {status for _, status, _ in answers} == {200}
    expected = {"1": before["items"], "2": after["items"]}
    for _, _, answer in answers:  # each answer is one version's, whole: ranking and named version agree
        assert answer["model"] == {"name": "ranker", "version": answer["model"]["version"], "alias": ALIAS}
        assert answer["items"] == expected[answer["model"]["version"]]
    first_new = min(at for at, _, answer in answers if answer["model"]["version"] == "2")
    assert first_new - moved_at < POLL_S + 2, "the new version serves within the poll interval"
    assert all(answer["model"]["version"] == "2" for at, _, answer in answers if at > first_new + 0.5)
    print(f"{len(answers)} requests, all 200; version 2 served {first_new - moved_at:.2f} s after the alias moved")


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
    ranker = httpx.get(f"{rollout_url}/readyz", timeout=10).json()["checks"]["ranker"]
    assert ranker["ready"]
    assert f"points to version {missing.version}, which Triton" in ranker["detail"]
    assert "still serving version 1" in ranker["detail"]

    client.set_registered_model_alias("ranker", ALIAS, "2")  # a served version again: the rollout proceeds
    steady_answer(rollout_url, "2", timeout_s=POLL_S * 5)
    assert "rollout held" not in httpx.get(f"{rollout_url}/readyz", timeout=10).json()["checks"]["ranker"]["detail"]

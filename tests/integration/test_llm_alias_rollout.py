"""The chat app's engine follows a moved MLflow alias live, under Serve with
real vLLM engines (deployments/llm_rollout.py).

On a copy of the stack's registry, tiny-llama gets a second version (other
weights, so at temperature 0 it answers otherwise) and a third that the
build would refuse (a context shorter than the app's max_model_len). A copy
of the chat app follows `tiny-llama@champion` there. Under load the alias
moves to the second version: Serve rolls the app over with surge, every
request is answered, and each answer is whole from the one version it
names. Moved to the third, nothing is redeployed and readiness says why.
"""
from __future__ import annotations

import copy
import json
import shutil
import threading
import time
from typing import NamedTuple

import httpx
import pytest

from deployments.llm_rollout import ALIAS_VERSIONS_ENV
from local_stack.llm_models import build_tiny_llama
from local_stack.serve_configs import application, local_config
from tests.servers import deploy, registry_copy, replicas, restore, wait_app, wait_http, wait_readiness

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

MODEL, APP, PREFIX = "tiny-llama", "chat-follow", "/follow"
COMPLETION = {"model": MODEL, "prompt": "Ray Serve composes models", "max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def registry(stack, tmp_path_factory):
    """(client, URI, {"first", "second", "refused"} -> version) of a registry copy, the alias on the first."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("llm-alias")
    client, uri = registry_copy(stack, root, {})
    first = client.get_model_version_by_alias(MODEL, "champion").version
    experiment = client.create_experiment("llm-alias", artifact_location=(root / "artifacts").as_uri())
    second_folder = build_tiny_llama(root / "second", seed=1)
    refused_folder = root / "refused"
    shutil.copytree(second_folder, refused_folder)
    config = json.loads((refused_folder / "config.json").read_text())
    (refused_folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 64}))
    versions = {"first": str(first)}
    for role, folder in (("second", second_folder), ("refused", refused_folder)):
        run = client.create_run(experiment)
        client.log_artifacts(run.info.run_id, str(folder), "model")
        versions[role] = str(client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version)
    client.set_registered_model_alias(MODEL, "champion", versions["first"])
    assert isinstance(client, MlflowClient)
    return client, uri, versions


@pytest.fixture(scope="module")
def following(serve_config, triton, registry, chat_url):
    """The chat app's copy at /follow, following the registry copy's alias every second."""
    _, uri, _ = registry
    app = copy.deepcopy(application(local_config(serve_config["http_options"]["port"], triton.grpc_url, llm=MODEL), "chat"))
    app.update(name=APP, route_prefix=PREFIX)
    app["args"]["model"].update(registry_uri=uri, alias_poll_s=1)
    config = copy.deepcopy(serve_config)
    config["applications"].append(app)
    deploy(config)
    wait_app(APP, {"RUNNING"}, timeout_s=400)
    base = chat_url.removesuffix("/v1") + PREFIX
    wait_http(f"{base}/v1/models", timeout_s=120)
    yield base
    restore(serve_config)


class Answer(NamedTuple):
    status: int  # 0: no HTTP answer
    version: str  # x-model-version
    text: str


class Load:
    """Closed-loop clients sending the same completion, every answer kept."""

    def __init__(self, url: str, clients: int = 2):
        self.url, self.clients = url, clients
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self) -> None:
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                try:
                    response = http.post(self.url, json=COMPLETION)
                    text = response.json()["choices"][0]["text"] if response.status_code == 200 else response.text
                    self.answers.append(Answer(response.status_code, response.headers.get("x-model-version", ""), text))
                except httpx.HTTPError as error:
                    self.answers.append(Answer(0, "", repr(error)))


def served_version(base: str) -> str:
    (card,) = [card for card in httpx.get(f"{base}/v1/models", timeout=10).json()["data"] if card["id"] == MODEL]
    return card["metadata"]["registry"]["version"]


def recorded_versions() -> dict:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    app = ray.get(controller.get_app_configs.remote())[APP]
    return json.loads(((app.runtime_env or {}).get("env_vars") or {}).get(ALIAS_VERSIONS_ENV) or "{}")


def test_a_moved_alias_rolls_the_engine_over_with_every_request_answered_whole_by_one_version(following, registry):
    client, _, versions = registry
    first, second = versions["first"], versions["second"]
    assert served_version(following) == first
    with Load(f"{following}/v1/completions") as load:
        time.sleep(3)
        client.set_registered_model_alias(MODEL, "champion", second)
        deadline = time.monotonic() + 900
        # Done when the old engine is gone: the last 10 answers all from the second version.
        while time.monotonic() < deadline:
            recent = load.answers[-10:]
            if len(recent) == 10 and all(answer.version == second for answer in recent) and recent[0] is not load.answers[0]:
                break
            time.sleep(1)
        time.sleep(2)
    answers = load.answers
    failed = [answer for answer in answers if answer.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed during the rollout, e.g. {failed[:3]}"
    by_version: dict[str, set[str]] = {}
    for answer in answers:
        by_version.setdefault(answer.version, set()).add(answer.text)
    assert set(by_version) == {first, second}, f"answers came from {set(by_version)}"
    assert all(len(texts) == 1 for texts in by_version.values()), f"a version answered two ways (mixed): {by_version}"
    assert by_version[first] != by_version[second], "the two versions must answer differently for this test to tell them apart"
    assert [answer.version for answer in answers[-10:]] == [second] * 10, "the old engine still answered at the end"
    assert answers[0].version == first
    assert served_version(following) == second
    assert recorded_versions() == {f"{MODEL}@champion": second}
    print(f"rollout: {len(answers)} answers, {sum(a.version == first for a in answers)} from version {first}, "
          f"{sum(a.version == second for a in answers)} from version {second}")


def test_a_version_the_engine_cannot_serve_is_refused_and_the_old_one_serves_on(following, registry):
    client, _, versions = registry
    second, refused = served_version(following), versions["refused"]
    before = replicas().get(f"{APP}#LLMServer:{MODEL}")
    client.set_registered_model_alias(MODEL, "champion", refused)
    ready = wait_readiness(f"{following}/readyz", lambda r: "which cannot be served" in r.text, timeout_s=30).json()
    detail = ready["checks"]["engine"]["detail"]
    assert ready["ready"] is True
    assert f"points to version {refused}, which cannot be served" in detail and "max_model_len=512 exceeds the model's context of 64 tokens" in detail
    assert f"still serving version {second}" in detail
    answer = httpx.post(f"{following}/v1/completions", json=COMPLETION, timeout=60)
    assert (answer.status_code, answer.headers["x-model-version"]) == (200, second)
    assert recorded_versions() == {f"{MODEL}@champion": second}, "nothing was redeployed"
    assert replicas().get(f"{APP}#LLMServer:{MODEL}") == before

"""The recommend graph asks the LLM to explain its top item; the LLM is a soft
dependency: when it fails or times out the ranking still comes back."""
import copy
import socket
import time

import httpx
import openai
import pytest

from apps.recommend import ExplainConfig
from tests.servers import deploy, free_port, restore, wait_app

REQUEST = {"user_id": 11, "item_ids": [5, 6, 7, 8, 9], "k": 3}


def expected_prompt(stack, user_id: int, item_id: int) -> str:
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(stack.feast_repo))
    row = store.get_online_features(
        features=store.get_feature_service("ranking"), entity_rows=[{"user_id": user_id, "item_id": item_id}], full_feature_names=True
    ).to_dict()
    values = {name: column[0] for name, column in row.items()} | {"item_id": item_id, "user_id": user_id}
    return ExplainConfig.model_fields["prompt_template"].default.format(**values)


def direct_answer(chat_url: str, stack, model: str, max_tokens: int, item_id: int) -> str:
    """The same prompt sent straight to the chat API (greedy: the same text)."""
    direct = openai.OpenAI(base_url=chat_url, api_key="x", max_retries=0).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": expected_prompt(stack, REQUEST["user_id"], item_id)}],
        max_tokens=max_tokens,
        temperature=0,
    )
    return direct.choices[0].message.content.strip()


def test_explains_the_top_item_with_the_llm(recommend_url, chat_url, stack, serve_config):
    response = httpx.post(recommend_url, json=REQUEST, timeout=60)
    assert response.status_code == 200
    body = response.json()
    explanation = body["explanation"]
    llm = serve_config["applications"][0]["args"]["explain"]["llm"]
    assert explanation["model"] == llm["model"] and explanation["reason"] is None
    assert body["latency_ms"]["explain"] > 0
    top = body["items"][0]["item_id"]
    assert explanation["text"] == direct_answer(chat_url, stack, llm["model"], llm["max_tokens"], top)


def test_embedded_engine_explains_by_handle(serve_config, deployed, recommend_url, chat_url, stack):
    """explain.llm.mode: embedded puts a vLLM engine (the same registered model
    and engine settings as the chat app) into the graph's own application,
    called by DeploymentHandle: same greedy text, no HTTP hop."""
    config = copy.deepcopy(serve_config)
    app = copy.deepcopy(config["applications"][0])
    chat = next(a for a in config["applications"] if a["name"] == "chat")
    remote = app["args"]["explain"]["llm"]
    app["name"], app["route_prefix"] = "explain-embedded", "/explain-embedded"
    app["args"]["explain"]["llm"] = {"mode": "embedded", "engine": chat["args"]["model"], "max_tokens": remote["max_tokens"], "timeout_s": 30}
    config["applications"].append(app)
    deploy(config)
    try:
        status = wait_app("explain-embedded", {"RUNNING"}, timeout_s=300)
        assert "ExplainLLM:tiny-llama" in status.deployments  # the engine is part of this app
        response = httpx.post(f"{deployed}/explain-embedded", json=REQUEST, timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        reference = httpx.post(recommend_url, json={**REQUEST, "explain": False}, timeout=30).json()
        assert body["items"] == reference["items"]
        assert body["explanation"]["model"] == "tiny-llama" and body["explanation"]["reason"] is None
        top = body["items"][0]["item_id"]
        assert body["explanation"]["text"] == direct_answer(chat_url, stack, "tiny-llama", remote["max_tokens"], top)
    finally:
        restore(serve_config)


def test_explanation_can_be_skipped_per_request(recommend_url):
    body = httpx.post(recommend_url, json={**REQUEST, "explain": False}, timeout=30).json()
    assert body["explanation"] is None and "explain" not in body["latency_ms"]


@pytest.fixture
def silent_server():
    """Accepts connections and never answers: an LLM that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()


def test_llm_failure_and_timeout_leave_the_ranking(serve_config, deployed, recommend_url, silent_server):
    config = copy.deepcopy(serve_config)
    base = config["applications"][0]
    for name, url, timeout_s in (
        ("llm-down", f"http://127.0.0.1:{free_port()}/v1", 5.0),
        ("llm-hangs", f"http://127.0.0.1:{silent_server}/v1", 0.5),
    ):
        app = copy.deepcopy(base)
        app["name"], app["route_prefix"] = name, f"/{name}"
        app["args"]["explain"]["llm"].update(url=url, timeout_s=timeout_s)
        app["args"]["explain"]["cooldown_s"] = 30
        config["applications"].append(app)
    deploy(config)
    try:
        for name in ("llm-down", "llm-hangs"):
            wait_app(name, {"RUNNING"}, timeout_s=120)
        reference = httpx.post(recommend_url, json={**REQUEST, "explain": False}, timeout=30).json()

        down = httpx.post(f"{deployed}/llm-down", json=REQUEST, timeout=30)
        assert down.status_code == 200
        assert down.json()["items"] == reference["items"]
        assert down.json()["explanation"]["text"] is None
        assert "APIConnectionError" in down.json()["explanation"]["reason"]

        started = time.monotonic()
        hangs = httpx.post(f"{deployed}/llm-hangs", json=REQUEST, timeout=30)
        elapsed = time.monotonic() - started
        assert hangs.status_code == 200
        assert hangs.json()["items"] == reference["items"]
        assert hangs.json()["explanation"] == {"text": None, "model": base["args"]["explain"]["llm"]["model"], "reason": "timeout after 0.5 s"}
        assert 0.5 <= elapsed < 2.0

        # Within the cooldown the graph does not wait on the hanging LLM again.
        started = time.monotonic()
        again = httpx.post(f"{deployed}/llm-hangs", json=REQUEST, timeout=30)
        assert time.monotonic() - started < 0.5
        assert again.json()["items"] == reference["items"]
        assert again.json()["explanation"]["reason"].startswith("skipped: the LLM failed")
        assert "(timeout after 0.5 s)" in again.json()["explanation"]["reason"]
    finally:
        restore(serve_config)

"""The chat app with API keys, under Serve, in front of vLLM's real app:
every vLLM route needs a key (vLLM's app is built before ours wraps it, so
this is checked on the served app, not only on a stand-in), the health
routes stay open, and a rotated key works on every route."""
from __future__ import annotations

import copy
import secrets
import time

import httpx
import pytest

from tests.servers import deploy, restore, wait_app

pytestmark = pytest.mark.integration

MODEL = "tiny-llama"
# (method, path, body): every route of vLLM's OpenAI app a client could call.
ROUTES = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1}),
    ("POST", "/tokenize", {"model": MODEL, "prompt": "hi"}),
    ("GET", "/version", None),
    ("GET", "/metrics", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
]


def call(base: str, method: str, path: str, body, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, base + path, json=body, headers=headers, timeout=60)


def wait_until(what: str, check, timeout_s: float = 420) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def keyed_chat(serve_config, chat_url, tmp_path_factory):
    """The session's chat app redeployed with two keys from files (a new
    replica, a new engine), then restored without them."""
    base = chat_url.removesuffix("/v1")
    folder = tmp_path_factory.mktemp("chat-keys")
    keys = {"primary": secrets.token_urlsafe(24), "next": secrets.token_urlsafe(24)}
    for name, value in keys.items():
        (folder / name).write_text(value + "\n")
    config = copy.deepcopy(serve_config)
    chat = next(app for app in config["applications"] if app["name"] == "chat")
    chat["args"]["http"] = {"api_keys": [{"name": name, "file": str(folder / name)} for name in keys]}
    deploy(config)
    # Until the old replica is gone: it serves, keyless, while the new one starts its engine.
    wait_until("only the keyed replica answers", lambda: all_answer(base, 401, 10)
               and call(base, "GET", "/v1/models", None, keys["primary"]).status_code == 200)
    wait_app("chat", {"RUNNING"}, timeout_s=300)
    yield base, keys
    restore(serve_config)
    wait_until("only an open replica answers", lambda: all_answer(base, 200, 10))
    wait_app("chat", {"RUNNING"}, timeout_s=300)


def all_answer(base: str, status: int, times: int) -> bool:
    """`times` calls of GET /v1/models without a key in a row all got `status`."""
    return all(call(base, "GET", "/v1/models", None).status_code == status for _ in range(times))


def test_every_vllm_route_needs_a_key(keyed_chat):
    base, _ = keyed_chat
    refused = {path: call(base, method, path, body) for method, path, body in ROUTES}
    assert {path: r.status_code for path, r in refused.items()} == {path: 401 for _, path, _ in ROUTES}
    for response in refused.values():
        assert response.json()["error"]["code"] == "missing_api_key", "in OpenAI's error shape"


def test_health_stays_open_and_quiet(keyed_chat):
    base, keys = keyed_chat
    assert call(base, "GET", "/health", None).status_code == 200
    quiet = call(base, "GET", "/readyz", None)
    assert quiet.status_code == 200 and quiet.json() == {"ready": True, "checks": {"engine": {"ready": True}}}
    keyed = call(base, "GET", "/readyz", None, keys["next"]).json()
    assert keyed["model"] == MODEL and keyed["registry"]["alias"] == "champion"


@pytest.mark.parametrize("key_name", ["primary", "next"])
def test_either_key_of_a_rotation_works_on_every_route(keyed_chat, key_name):
    base, keys = keyed_chat
    answers = {path: call(base, method, path, body, keys[key_name]).status_code for method, path, body in ROUTES}
    assert answers == {path: 200 for _, path, _ in ROUTES}

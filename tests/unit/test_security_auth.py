"""API keys: who may call. Health routes are open; every other route needs
a configured key, by header `Authorization: Bearer` or `X-API-Key`."""
import logging

import pytest
from fastapi import WebSocket
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from deployments.http.security import ApiKeySource, HttpSecurity, KeyRing, KeyUnavailable
from tests.unit.asgi_calls import call, tiny_app

PRIMARY = "sg-primary-0123456789abcdef"
NEXT = "sg-next-fedcba9876543210ZZ"
WRONG = "sg-primary-0123456789abcdeX"  # one character off


@pytest.fixture
def keys(monkeypatch, tmp_path) -> dict:
    """`primary` from an environment variable, `next` from a mounted Secret file
    (trailing newline and all, as `kubectl create secret --from-file` leaves it)."""
    monkeypatch.setenv("SG_KEY_PRIMARY", PRIMARY)
    secret = tmp_path / "api-key-next"
    secret.write_text(NEXT + "\n")
    return {"api_keys": [{"name": "primary", "env": "SG_KEY_PRIMARY"}, {"name": "next", "file": str(secret)}]}


@pytest.fixture
def client(keys) -> TestClient:
    return TestClient(tiny_app(keys))


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_routes_are_open(client, path):
    assert client.get(path).status_code == 200


def test_health_routes_are_open_under_the_root_path(keys):
    # Ray Serve's scope for route_prefix /recommend: root_path "/recommend", path "/recommend/healthz".
    reply = call(tiny_app(keys), "/recommend/healthz", method="GET", root_path="/recommend")
    assert reply.status == 200, reply.body


@pytest.mark.parametrize(
    "path, root_path",
    [
        ("/healthz/../v1/echo", ""),
        ("/healthz/", ""),
        ("//healthz", ""),
        ("/healthzz", ""),
        ("/v1/echo/healthz", ""),
        ("/recommendx/healthz", "/recommend"),
        ("/recommend/healthz/../../v1/echo", "/recommend"),
    ],
)
def test_exempt_paths_match_exactly(keys, path, root_path):
    assert call(tiny_app(keys), path, root_path=root_path).status == 401


def test_no_key_is_401_with_a_bearer_challenge(client):
    reply = client.post("/v1/echo")
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert reply.json()["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize("headers", [{"Authorization": f"Basic {PRIMARY}"}, {"Authorization": "Bearer "}, {"X-API-Key": ""}])
def test_unusable_credentials_count_as_no_key(client, headers):
    reply = client.post("/v1/echo", headers=headers)
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {WRONG}"}, {"X-API-Key": WRONG}, {"X-API-Key": PRIMARY[:-1]}])
def test_wrong_key_is_401_invalid_api_key(client, headers):
    # 401, not 403: the credentials are not valid (RFC 9110); OpenAI answers the same.
    reply = client.post("/v1/echo", headers=headers)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert reply.json() == {"error": {"code": "invalid_api_key", "message": "the API key is not valid"}}


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {PRIMARY}"}, {"authorization": f"bearer {PRIMARY}"}, {"X-API-Key": PRIMARY}],
    ids=["bearer", "bearer-lowercase", "x-api-key"],
)
def test_both_header_styles_are_accepted(client, headers):
    reply = client.post("/v1/echo", headers=headers)
    assert reply.status_code == 200
    assert reply.json()["api_key_name"] == "primary"


def test_bearer_wins_over_x_api_key(client):
    assert client.post("/v1/echo", headers={"Authorization": f"Bearer {WRONG}", "X-API-Key": PRIMARY}).status_code == 401


def test_two_named_keys_rotate_and_the_app_learns_which_was_used(client):
    # `primary` from the environment, `next` from a file: both open the door, each by name.
    assert client.post("/v1/echo", headers={"X-API-Key": PRIMARY}).json()["api_key_name"] == "primary"
    assert client.post("/v1/echo", headers={"X-API-Key": NEXT}).json()["api_key_name"] == "next"


def test_a_key_is_compared_with_every_configured_key_in_constant_time(keys, monkeypatch):
    import hmac

    from deployments.http.security import keys as key_module

    compared, original = [], hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return original(a, b)

    ring = KeyRing(HttpSecurity.model_validate(keys).api_keys)
    monkeypatch.setattr(key_module.hmac, "compare_digest", compare_digest)
    # The first key matches, the second does not, no key matches: two comparisons
    # each time, all of equal-length digests (neither order nor length shows in the timing).
    assert [ring.match(PRIMARY.encode()), ring.match(NEXT.encode()), ring.match(b"short")] == ["primary", "next", None]
    assert compared == [(32, 32)] * 6


def test_the_key_value_never_shows_in_logs_reprs_or_errors(keys, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    config = HttpSecurity.model_validate(keys)
    client = TestClient(tiny_app(keys))
    replies = [
        client.post("/v1/echo", headers={"X-API-Key": PRIMARY}),
        client.post("/v1/echo", headers={"Authorization": f"Bearer {NEXT}"}),
        client.post("/v1/echo", headers={"X-API-Key": WRONG}),
        client.post("/v1/echo"),
    ]
    ring = KeyRing(config.api_keys)
    secret = config.api_keys[0].load()
    monkeypatch.setenv("SG_KEY_SHORT", PRIMARY[:8])
    with pytest.raises(KeyUnavailable) as too_short:
        ApiKeySource(name="short", env="SG_KEY_SHORT").load()
    seen = "\n".join(
        [caplog.text, *(r.text for r in replies), *(str(dict(r.headers)) for r in replies)]
        + [repr(config), str(config.model_dump()), repr(ring), repr(secret), str(secret), str(too_short.value)]
    )
    assert caplog.text and "primary" in caplog.text  # the log names keys...
    for value in (PRIMARY, NEXT, WRONG, PRIMARY[:8]):
        assert value not in seen  # ...never their values


def test_a_rejected_path_cannot_forge_a_log_line(keys, caplog):
    caplog.set_level(logging.INFO)
    forged = "/v1/echo\nINFO accepted GET /admin by key primary\r"
    assert call(tiny_app(keys), forged).status == 401
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected")]
    assert logged == ["rejected POST /v1/echo\\nINFO accepted GET /admin by key primary\\r: no API key"]
    assert call(tiny_app(keys), "/" + "a" * 5000).status == 401
    assert max(len(r.getMessage()) for r in caplog.records) < 300, "a long path is cut in the log"


def test_serves_route_listing_needs_a_key(client):
    assert client.get("/-/routes").status_code == 401


def test_a_key_source_that_cannot_be_read_fails_at_install(tmp_path, monkeypatch):
    monkeypatch.delenv("SG_KEY_UNSET", raising=False)
    with pytest.raises(KeyUnavailable, match="'primary': environment variable SG_KEY_UNSET is unset or empty"):
        tiny_app({"api_keys": [{"name": "primary", "env": "SG_KEY_UNSET"}]})
    missing = tmp_path / "no-such-secret"
    with pytest.raises(KeyUnavailable, match=f"'next': cannot read file {missing}"):
        tiny_app({"api_keys": [{"name": "next", "file": str(missing)}]})


@pytest.mark.parametrize(
    "source",
    [
        {"name": "primary"},
        {"name": "primary", "env": "A", "file": "/a"},
        {"name": "primary", "value": PRIMARY},  # values never go in a config file
        {"name": "has space", "env": "A"},
        {"name": "primary", "env": "NOT-A-VAR"},
    ],
)
def test_a_key_source_is_a_name_and_exactly_one_of_env_or_file(source):
    with pytest.raises(ValidationError):
        ApiKeySource.model_validate(source)


def test_without_keys_every_route_is_open_and_one_warning_says_so(caplog):
    caplog.set_level(logging.INFO)
    client = TestClient(tiny_app())
    assert client.post("/v1/echo").status_code == 200
    assert client.post("/v1/echo").status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["API keys are off: every route is open (configure api_keys to require a key)"]


def test_openai_error_format_is_what_the_openai_client_parses(keys):
    import openai

    app = tiny_app(keys, error_format="openai")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "smollm2", "object": "model", "created": 0, "owned_by": "me"}]}

    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=TestClient(app), max_retries=0)

    assert [m.id for m in client(PRIMARY).models.list()] == ["smollm2"]
    with pytest.raises(openai.AuthenticationError) as rejected:
        client(WRONG).models.list()
    assert rejected.value.status_code == 401
    assert rejected.value.body == {
        "message": "the API key is not valid", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"
    }


def test_websockets_need_a_key_too(keys):
    app = tiny_app(keys)

    @app.websocket("/v1/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text("hello")
        await socket.close()

    client = TestClient(app)
    with pytest.raises(WebSocketDisconnect) as closed:
        with client.websocket_connect("/v1/ws"):
            pass
    assert closed.value.code == 1008
    with client.websocket_connect("/v1/ws", headers={"X-API-Key": PRIMARY}) as socket:
        assert socket.receive_text() == "hello"

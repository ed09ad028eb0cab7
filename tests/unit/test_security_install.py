"""One typed config installs all three middlewares in order, and the
platform's two HTTP apps take it as their optional `http` args."""
import asyncio
import types

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from deployments.http import security
from deployments.http.readiness import CachedReadiness
from deployments.http.security import ApiKeyAuth, BodyLimit, CallerSamplingCap, HttpSecurity, RequestId
from tests.unit.asgi_calls import tiny_app

KEY = "sg-primary-0123456789abcdef"
KEYS = {"api_keys": [{"name": "primary", "env": "SG_KEY_PRIMARY"}]}


@pytest.fixture(autouse=True)
def key_in_env(monkeypatch):
    monkeypatch.setenv("SG_KEY_PRIMARY", KEY)


def test_order_is_request_id_then_auth_then_body_limit():
    app = security.install(FastAPI(), KEYS)
    assert [m.cls for m in app.user_middleware] == [RequestId, ApiKeyAuth, BodyLimit]


def test_an_anonymous_oversized_request_learns_only_that_it_needs_a_key():
    client = TestClient(tiny_app(KEYS, max_body_bytes=10))
    anonymous = client.post("/v1/echo", content=b"x" * 100)
    known = client.post("/v1/echo", content=b"x" * 100, headers={"X-API-Key": KEY})
    assert (anonymous.status_code, known.status_code) == (401, 413)
    assert anonymous.headers["x-request-id"] and known.headers["x-request-id"]


def test_defaults():
    config = HttpSecurity()
    assert config.api_keys == [] and config.max_body_bytes == 1 << 20 and config.error_format == "project"
    assert config.exempt_paths == ["/healthz", "/readyz", "/health", "/-/healthz"]  # /-/routes lists the apps: keyed


@pytest.mark.parametrize(
    "bad",
    [
        {"api_key": "sg-primary-0123456789abcdef"},
        {"api_keys": [{"name": "a", "env": "A"}, {"name": "a", "file": "/a"}]},
        {"max_body_bytes": 0},
        {"exempt_paths": ["healthz"]},
        {"exempt_paths": ["/healthz?x=1"]},
        {"error_format": "xml"},
    ],
    ids=["unknown-field", "duplicate-names", "zero-limit", "relative-path", "query", "unknown-format"],
)
def test_a_wrong_config_fails_validation(bad):
    with pytest.raises(ValidationError):
        HttpSecurity.model_validate(bad)


def _graph_args(http=None) -> dict:
    from tests.servers import load_config

    args = load_config()["applications"][0]["args"]
    return {**args, "http": http} if http is not None else args


def test_graph_args_take_http_and_default_to_none():
    from apps.graph import GraphArgs

    assert GraphArgs.model_validate(_graph_args()).http is None
    args = GraphArgs.model_validate(_graph_args({**KEYS, "max_body_bytes": 65536}))
    assert args.http.api_keys[0].name == "primary" and args.http.max_body_bytes == 65536
    with pytest.raises(ValidationError, match="http.api_keys.0.value"):
        GraphArgs.model_validate(_graph_args({"api_keys": [{"name": "p", "value": KEY}]}))


def _graph_ingress(http) -> tuple[types.SimpleNamespace, FastAPI]:
    """What Serve hands __serve_build_asgi_app__: self, with `app` the frozen copy of `api`."""
    from apps.graph import GraphArgs

    app = FastAPI()

    @app.post("/")
    async def recommend() -> dict:
        return {"items": []}

    from deployments.graph.request import request_model

    args = GraphArgs.model_validate(_graph_args(http))
    executor = types.SimpleNamespace(request_model=request_model(args.graph.name, args.graph.request), spec=args.graph)
    from deployments.http import security

    guard = security.key_guard(args.http) if args.http is not None else None  # as GraphIngress.__init__ reads them
    return types.SimpleNamespace(app=app, args=args, executor=executor, _guard=guard), app


def test_the_graph_replica_installs_its_http_args():
    from deployments.graph.serving import GraphIngress

    self, app = _graph_ingress(KEYS)
    served = asyncio.run(GraphIngress.func_or_class.__serve_build_asgi_app__(self))
    client = TestClient(served)
    assert client.post("/").status_code == 401
    assert client.post("/", headers={"Authorization": f"Bearer {KEY}"}).json() == {"items": []}


def test_the_graph_replica_without_http_args_still_bounds_the_body():
    """No keys, no request ids: only the default body limit (1 MiB), 413 before
    FastAPI reads the JSON; outermost, as on every app, the cap on callers' traces."""
    from deployments.graph.serving import GraphIngress

    self, app = _graph_ingress(None)
    served = asyncio.run(GraphIngress.func_or_class.__serve_build_asgi_app__(self))
    assert [m.cls for m in served.user_middleware] == [CallerSamplingCap, BodyLimit]
    client = TestClient(served)
    assert client.post("/", content=b"[" + b"1," * 600_000 + b"1]").status_code == 413
    assert client.post("/", content=b"{}").json() == {"items": []}


def test_chat_args_answer_in_openai_shape():
    from apps.chat import ChatArgs

    model = {"name": "smollm2", "registry_uri": "sqlite:///x.db"}
    assert ChatArgs.model_validate({"model": model}).http is None
    assert ChatArgs.model_validate({"model": model, "http": KEYS}).http.error_format == "openai"
    with pytest.raises(ValidationError, match="http.error_format"):
        ChatArgs.model_validate({"model": model, "http": {"error_format": "project"}})


def test_the_chat_replica_guards_vllms_app(monkeypatch):
    """vLLM's build_app hands over an app whose middleware stack is already
    built; the chat replica still puts the keys in front, in OpenAI's shape,
    and leaves /readyz open for probes."""
    from ray.llm._internal.serve.core.server.llm_server import LLMServer

    from apps.chat import ChatHttpSecurity, RegistryLLMServer

    async def vllm_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def completions() -> dict:
            return {"object": "chat.completion"}

        app.middleware_stack = app.build_middleware_stack()  # as vLLM's build_app leaves it
        return app

    async def healthy() -> None:
        return None

    class Replica(RegistryLLMServer):
        def __del__(self):  # LLMServer's is a coroutine, for a replica that really started
            pass

    monkeypatch.setattr(LLMServer, "__serve_build_asgi_app__", vllm_app)
    server = object.__new__(Replica)  # what RegistryLLMServer.__init__ would leave, minus the engine
    server._registry, server._http = {"version": "1"}, ChatHttpSecurity.model_validate(KEYS)
    server._llm_config, server.engine = types.SimpleNamespace(model_id="smollm2"), types.SimpleNamespace(check_health=healthy)
    server._keys_on, server._readiness, server._max_n = True, CachedReadiness(server._engine_check, name="chat"), 4
    server._caller_sampling_ratio, server.alias_follower = None, None
    client = TestClient(asyncio.run(server.__serve_build_asgi_app__()))

    assert client.get("/readyz").json() == {"ready": True, "checks": {"engine": {"ready": True}}}, "open, and quiet without a key"
    keyed = client.get("/readyz", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert (keyed["model"], keyed["registry"], keyed["checks"]["engine"]["detail"]) == ("smollm2", {"version": "1"}, "smollm2 version 1 answers")
    rejected = client.post("/v1/chat/completions")
    assert rejected.status_code == 401
    assert rejected.json()["error"] == {
        "message": rejected.json()["error"]["message"], "type": "invalid_request_error", "param": None, "code": "missing_api_key"
    }
    answered = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert (answered.status_code, answered.headers["x-model-version"]) == (200, "1")

"""An OpenAI-compatible API for one vLLM engine, its model from the MLflow registry.

`serve run configs/local.yaml` serves it at the root, like vLLM's own server:

    GET  /v1/models                 what is loaded, and which registry version
    POST /v1/chat/completions       (stream: true for server-sent events)
    POST /v1/completions
    GET  /health                    vLLM's engine check
    GET  /readyz                    ready or not; with a key (or keys off) the engine's detail, model and registry version

The replica is `ray.serve.llm`'s LLMServer serving vLLM's own OpenAI app
(direct streaming): HAProxy forwards each request straight to the replica
that runs the engine, so tokens stream without an extra ingress hop, and the
OpenAI surface (validation, error format, streaming, usage, aborts on
disconnect) is vLLM's. This module adds the registry: the model is resolved
from `models:/<name>@<alias>`, `/v1/models` and every answer's
`x-model-version` header name the version, and with `model.alias_poll_s`
a moved alias rolls the app over to its new version
(deployments/llm_rollout.py).

`http:` in the args adds API keys, a body limit and request ids
(deployments.http.security) in front of vLLM's app, rejecting in OpenAI's error shape.

One app serves one model, as one vLLM server does; serve several models as
several apps, each under its own `route_prefix` (base URL `<prefix>/v1`).
"""
import json
from typing import Any, Literal, Optional

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray import serve
from ray.serve import Application

from deployments.http import security
from deployments.http.readiness import CachedReadiness, may_see_details, readiness_response
from deployments.http.security.auth import app_path
from deployments.http.security.errors import error_body, send_error
from deployments.llm_engine import LLMModelConfig, registry_source, resolve
from deployments.llm_rollout import FollowingLLMServer, llm_deployment

__all__ = ["ChatArgs", "ChatHttpSecurity", "build"]


class ChatHttpSecurity(security.HttpSecurity):
    """HttpSecurity for an OpenAI-compatible surface: rejections in OpenAI's error shape."""

    error_format: Literal["openai"] = Field("openai", description="OpenAI clients parse only OpenAI's error shape.")


class ChatArgs(BaseModel):
    """Application args of the chat app (the `args:` of its Serve config)."""

    model_config = ConfigDict(extra="forbid")

    model: LLMModelConfig
    max_n: int = Field(
        4, ge=1, le=128, description="Most choices one completion request may ask for (`n`, `best_of`): each is a "
        "sequence the engine runs; more gets 400 naming the field."
    )
    http: Optional[ChatHttpSecurity] = Field(
        None, description="API keys, body limit and request ids (deployments.http.security); without it only the default body limit (1 MiB)."
    )
    caller_sampling_ratio: Optional[float] = Field(None, ge=0, le=1, description=security.CALLER_SAMPLING_RATIO_DESCRIPTION)


class RegistryLLMServer(FollowingLLMServer):
    """LLMServer as the app's ingress: vLLM's OpenAI app plus the registry."""

    async def __init__(self, llm_config: Any, *, registry: dict[str, str], http: Optional[dict] = None,
                       max_n: int = ChatArgs.model_fields["max_n"].default,
                       caller_sampling_ratio: Optional[float] = None, **kwargs):
        self._registry = registry
        self._max_n = max_n
        self._caller_sampling_ratio = caller_sampling_ratio
        self._http = ChatHttpSecurity.model_validate(http) if http is not None else None
        self._keys_on = self._http is not None and bool(self._http.api_keys)
        self._readiness = CachedReadiness(self._engine_check, name="chat")
        await super().__init__(llm_config, **kwargs)

    async def __serve_build_asgi_app__(self):
        app = await super().__serve_build_asgi_app__()
        # Ahead of vLLM's own /v1/models, which knows nothing of the registry.
        app.router.routes.insert(0, APIRoute("/v1/models", self._models, methods=["GET"]))
        app.router.routes.insert(0, APIRoute("/readyz", self._ready, methods=["GET"]))
        # vLLM's build_app builds the middleware stack eagerly; Starlette
        # rebuilds it lazily, outermost the middlewares added last (ours).
        app.middleware_stack = None
        app.add_middleware(EngineDownGuard, engine_error=self._engine_error)
        # vLLM answers FastAPI's HTTPException in OpenAI's shape, but a body
        # that fails to parse raises Starlette's, which FastAPI's default
        # handler answers as {"detail": ...}.
        app.add_exception_handler(StarletteHTTPException, openai_http_error)
        if HTTPException not in app.exception_handlers:
            app.add_exception_handler(HTTPException, openai_http_error)
        app.add_middleware(ChoicesLimit, max_n=self._max_n)  # inside the body limit: it reads a bounded body
        app.add_middleware(ModelVersionHeader, version=self._registry["version"])
        if self._http is not None:
            security.install(app, self._http)
        else:
            security.bound_body(app, error_format="openai")
        return security.cap_caller_sampling(app, self._caller_sampling_ratio)

    def _engine_error(self) -> Optional[BaseException]:
        """vLLM's own verdict: the engine process died (EngineDeadError)."""
        client = getattr(self.engine, "_engine_client", None)
        return client.dead_error if client is not None and client.errored else None

    async def _models(self, request: Request) -> JSONResponse:
        listing = (await request.app.state.openai_serving_models.show_available_models()).model_dump()
        for card in listing["data"]:
            if card["id"] == self._llm_config.model_id:
                card["metadata"] = {"registry": self._registry}
        return JSONResponse(listing)

    async def _ready(self, request: Request) -> JSONResponse:
        """Ready or not; the engine's error, the model and its registry
        version to keyed callers only (deployments/http/readiness.py)."""
        return readiness_response(
            await self._readiness.current(), detailed=may_see_details(request.scope, self._keys_on),
            extra={"model": self._llm_config.model_id, "registry": self._registry},
        )

    async def _engine_check(self) -> dict[str, tuple[bool, str]]:
        try:
            await self.engine.check_health()
        except Exception as error:  # the engine process died or stalls
            return {"engine": (False, f"{type(error).__name__}: {error}")}
        detail = f"{self._llm_config.model_id} version {self._registry['version']} answers"
        return {"engine": (True, detail if self.alias_problem is None else f"{detail}; {self.alias_problem}")}


async def openai_http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own HTTP errors (a body that is not JSON at
    all: "There was an error parsing the body", a wrong method) in OpenAI's
    error shape, as vLLM answers its own: the openai client parses only that.
    Found by the schema-driven fuzz run (tests/integration/test_fuzz.py)."""
    body = error_body("openai", code=str(error.status_code), message=str(error.detail))
    return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))


class EngineDownGuard:
    """ASGI middleware: while the engine is dead, the OpenAI routes answer 503
    at once, in OpenAI's error shape with Retry-After, instead of vLLM's 500
    per request. The replica's health check (every HEALTH_CHECK_PERIOD_S,
    deployments/llm_engine.py) then fails and Serve starts a new engine."""

    RETRY_AFTER_S = 5

    def __init__(self, app, engine_error):
        self.app = app
        self.engine_error = engine_error

    async def __call__(self, scope, receive, send):
        error = self.engine_error() if scope["type"] == "http" and scope["path"].startswith("/v1/") else None
        if error is None:
            await self.app(scope, receive, send)
            return
        await send_error(
            scope, receive, send, error_format="openai", status=503, code="engine_down", openai_type="server_error",
            message=f"the engine is down ({type(error).__name__}); Serve is replacing this replica, retry shortly",
            headers={"Retry-After": str(self.RETRY_AFTER_S)},
        )


class ModelVersionHeader:
    """ASGI middleware: every answer names the registered version of the
    engine that gave it (`x-model-version`), so a client can tell versions
    apart while an alias's new version rolls out (deployments/llm_rollout.py)."""

    def __init__(self, app, version: str):
        self.app = app
        self.header = (b"x-model-version", version.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_version)


class ChoicesLimit:
    """ASGI middleware: a completion request that asks for more than `max_n`
    choices (`n` or `best_of`) gets 400 in OpenAI's shape, naming the field,
    before vLLM schedules anything: each choice is a sequence the engine runs,
    and vLLM itself takes any `n`. It reads the body whole, so it sits inside
    the body limit; the app then reads the same bytes."""

    PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})

    def __init__(self, app, max_n: int):
        self.app = app
        self.max_n = max_n

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or app_path(scope) not in self.PATHS:
            await self.app(scope, receive, send)
            return
        chunks, message = [], {"more_body": True}
        while message.get("more_body"):
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nothing to answer
            chunks.append(message.get("body", b""))
        body = b"".join(chunks)
        field, value = self._over_limit(body)
        if field is not None:
            await send_error(
                scope, receive, send, error_format="openai", status=400, code="too_many_choices", param=field,
                message=f"{field} is {value}; this server allows at most {self.max_n} choices per request",
            )
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _over_limit(self, body: bytes) -> tuple[Optional[str], Any]:
        """The first of `n`, `best_of` over the limit, and its value; a body
        that is not a JSON object is vLLM's to refuse."""
        try:
            request = json.loads(body)
        except ValueError:
            return None, None
        if isinstance(request, dict):
            for field in ("n", "best_of"):
                value = request.get(field)
                if isinstance(value, int) and not isinstance(value, bool) and value > self.max_n:
                    return field, value
        return None, None


def build(args: ChatArgs) -> Application:
    args = ChatArgs.model_validate(args)
    resolved = resolve(args.model)
    bind_kwargs: dict[str, Any] = {
        "registry": registry_source(args.model, resolved), "max_n": args.max_n,
        "caller_sampling_ratio": args.caller_sampling_ratio,
    }
    if args.http is not None:  # names and sources only: the keys are read in the replica
        bind_kwargs["http"] = args.http.model_dump(mode="json")
    return llm_deployment(
        args.model, resolved, name_prefix="LLMServer:", bind_kwargs=bind_kwargs,
        deployment_cls=serve.ingress()(RegistryLLMServer),
    )

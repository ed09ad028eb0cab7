"""API-key access control, as pure ASGI middleware.

A caller presents a key as `Authorization: Bearer <key>` (what the official
`openai` client sends) or `X-API-Key: <key>`. Every route needs one except
the exempt paths (liveness and readiness, which probes call without
credentials), matched exactly, with or without the app's root_path prefix:
`/healthz` and `/recommend/healthz` are open, `/healthz/../v1` is not.

Both a missing and a wrong key answer 401, as OpenAI, GitHub and Stripe do
and as RFC 9110 means it: 401 is "no valid credentials", 403 is "valid
credentials, not allowed", and a key here grants everything or nothing.
Each 401 carries `WWW-Authenticate: Bearer` (RFC 6750; `error="invalid_token"`
when a key was presented). The name of the matching key goes to
`scope["state"]["api_key_name"]` (`request.state.api_key_name`) so logs can
say which key was used; its value is never logged, echoed or repr'd.

With no keys configured the middleware lets everything through and says so
once, loudly, at start: fine on a laptop, never on a shared network.
"""
from __future__ import annotations

import logging
from typing import Iterable, Optional

from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.errors import GraphError
from deployments.http.security.errors import ErrorFormat, send_error
from deployments.http.security.keys import KeyRing
from deployments.http.security.rate_limits import KeyRateLimits

logger = logging.getLogger(__name__)

DEFAULT_EXEMPT_PATHS = ("/healthz", "/readyz", "/health", "/-/healthz")

# (code, message, WWW-Authenticate) for no key and for a wrong one
_MISSING = ("missing_api_key", "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`", "Bearer")
_INVALID = ("invalid_api_key", "the API key is not valid", 'Bearer error="invalid_token"')


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> Optional[bytes]:
    """The key from `Authorization: Bearer <key>`, else from `X-API-Key`; None when neither."""
    bearer = api_key = None
    for name, value in headers:  # ASGI header names are lower-case
        if name == b"authorization" and bearer is None:
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                bearer = token.strip()
        elif name == b"x-api-key" and api_key is None and value.strip():
            api_key = value.strip()
    return bearer if bearer is not None else api_key


class MissingKey(GraphError):
    """401 for a call outside HTTP (a gRPC call: UNAUTHENTICATED)."""

    status = 401
    code = "missing_api_key"


class InvalidKey(MissingKey):
    code = "invalid_api_key"


class RateLimited(GraphError):
    """429 for a call outside HTTP (a gRPC call: RESOURCE_EXHAUSTED)."""

    status = 429
    code = "rate_limit_exceeded"


async def admit_call(keys: KeyRing, rate_limits: KeyRateLimits, headers: Iterable[tuple[bytes, bytes]]) -> Optional[str]:
    """The ASGI middleware's rule for a call that is not ASGI (gRPC, its
    metadata as `headers`): the matching key's name (None with keys off), or
    MissingKey / InvalidKey / RateLimited. Same keys, same per-key buckets as the
    replica's HTTP routes, when given the middleware's own."""
    if not keys:
        return None
    key = presented_key(headers)
    name = keys.match(key) if key is not None else None
    if name is None:
        raise MissingKey(_MISSING[1]) if key is None else InvalidKey(_INVALID[1])
    retry_after_s = await rate_limits.admit(name)
    if retry_after_s is not None:
        raise RateLimited(f"API key {name!r} is over its rate; retry after {retry_after_s} s")
    return name


def printable(text: str, limit: int = 200) -> str:
    """A client's text for a log line: control characters escaped (a path
    with a newline cannot start a line of its own) and cut at `limit`."""
    escaped = text.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def app_path(scope: Scope) -> str:
    """The request's path inside the app: without the app's root_path (Serve's route prefix) when it starts with it."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def is_exempt(scope: Scope, exempt: frozenset[str]) -> bool:
    """The request's path is one of `exempt`, exactly, with or without the app's root_path."""
    return scope["path"] in exempt or app_path(scope) in exempt


class ApiKeyAuth:
    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyRing,
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT_PATHS,
        error_format: ErrorFormat = "project",
        rate_limits: Optional[KeyRateLimits] = None,
    ):
        self.app = app
        self.keys = keys
        self.rate_limits = rate_limits or KeyRateLimits({})
        self.exempt = frozenset(exempt_paths)
        self.error_format = error_format
        if keys:
            logger.info("API keys on: %s; open paths: %s", ", ".join(keys.names), ", ".join(sorted(self.exempt)))
        else:
            logger.warning("API keys are off: every route is open (configure api_keys to require a key)")

    def is_exempt(self, scope: Scope) -> bool:
        return is_exempt(scope, self.exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.keys or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        key = presented_key(scope["headers"])
        name = self.keys.match(key) if key is not None else None
        if self.is_exempt(scope):  # open to all; a valid key still names its caller (/readyz then says more)
            await self.app(scope if name is None else _named(scope, name), receive, send)
            return
        if name is None:
            await self._reject(scope, receive, send, missing=key is None)
            return
        retry_after_s = await self.rate_limits.admit(name)
        if retry_after_s is not None:
            limit = self.rate_limits.limits[name]
            await send_error(
                scope, receive, send, error_format=self.error_format, status=429, code="rate_limit_exceeded",
                openai_type="requests", headers={"Retry-After": str(retry_after_s)},
                message=f"API key {name!r} is over its rate ({limit.requests_per_s:g} requests/s, burst {limit.burst}); "
                f"retry after {retry_after_s} s",
            )
            return
        await self.app(_named(scope, name), receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, *, missing: bool) -> None:
        method = scope.get("method", "WEBSOCKET")
        logger.info("rejected %s %s: %s API key", method, printable(scope["path"]), "no" if missing else "invalid")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation, before accept
            return
        code, message, challenge = _MISSING if missing else _INVALID
        await send_error(
            scope, receive, send, error_format=self.error_format, status=401, code=code, message=message,
            headers={"WWW-Authenticate": challenge},
        )


def _named(scope: Scope, key_name: str) -> Scope:
    return {**scope, "state": {**scope.get("state", {}), "api_key_name": key_name}}

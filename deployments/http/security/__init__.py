"""HTTP hardening for the platform's apps: who may call (API keys, each with
an optional rate), how much they may send (a body limit), and which request
a log line belongs to (request ids). Three small ASGI middlewares, installed together from one
typed config (and, apart, `cap_caller_sampling`: how many requests a caller's
traceparent may have traced, deployments/http/security/trace_sampling.py):

    from deployments.http import security
    security.install(api, security.HttpSecurity(api_keys=[{"name": "primary", "env": "SG_KEY_PRIMARY"}]))

Order, outermost first: RequestId -> ApiKeyAuth -> InFlightLimit (when
`max_in_flight` is set: load shedding, deployments/http/security/shedding.py) ->
BodyLimit -> the app.

- RequestId outermost, so every response the others produce (401, 413, 400)
  carries X-Request-ID and their log lines carry the id.
- ApiKeyAuth before BodyLimit: an anonymous caller gets 401 whatever it
  sends, learns nothing (not even the limit), and its body is never read.
- BodyLimit last, still outside the routes: 413 before FastAPI reads or
  parses a byte of JSON.

All three sit inside Starlette's ServerErrorMiddleware (always outermost), so
an unhandled 500 skips them; under Ray Serve the proxy's own request-id
middleware, outside the app, still stamps that response.
"""
from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.applications import Starlette

from deployments.http.security.auth import DEFAULT_EXEMPT_PATHS, ApiKeyAuth, admit_call, presented_key
from deployments.http.security.errors import ErrorFormat, error_body
from deployments.http.security.keys import ApiKeySource, KeyAbsent, KeyRing, KeyUnavailable
from deployments.http.security.limits import BodyLimit
from deployments.http.security.rate_limits import KeyRateLimits, RateLimit
from deployments.http.security.shedding import InFlightLimit
from deployments.http.security.request_id import RequestId, RequestIdFilter, current_request_id, log_request_ids
from deployments.http.security.trace_sampling import CallerSamplingCap

__all__ = [
    "ApiKeyAuth",
    "admit_call",
    "ApiKeySource",
    "BodyLimit",
    "CallerSamplingCap",
    "DEFAULT_EXEMPT_PATHS",
    "ErrorFormat",
    "HttpSecurity",
    "KeyAbsent",
    "KeyRing",
    "InFlightLimit",
    "KeyRateLimits",
    "KeyUnavailable",
    "RateLimit",
    "RequestId",
    "RequestIdFilter",
    "current_request_id",
    "error_body",
    "bound_body",
    "cap_caller_sampling",
    "install",
    "key_guard",
    "log_request_ids",
    "presented_key",
]

ExemptPath = Annotated[str, Field(pattern=r"^/[A-Za-z0-9._~/-]*$")]


class HttpSecurity(BaseModel):
    """The `http:` args of an app: API keys, body limit, request ids, error shape."""

    model_config = ConfigDict(extra="forbid")

    api_keys: list[ApiKeySource] = Field(
        default_factory=list,
        description="Accepted keys, by name and source (env or file), never by value. Empty: every route is open.",
    )
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest accepted request body; larger gets 413.")
    exempt_paths: list[ExemptPath] = Field(
        default_factory=lambda: list(DEFAULT_EXEMPT_PATHS),
        description="Paths open without a key (health probes), matched exactly, with or without the app's root_path.",
    )
    error_format: ErrorFormat = Field("project", description="project: {error: {code, message}}; openai: OpenAI's shape.")
    echo_request_id: bool = Field(True, description="Set X-Request-ID on responses (Ray Serve's proxy also does).")
    max_in_flight: Optional[int] = Field(
        None, gt=0, description="Shed load: past this many requests running in the replica, 503 with Retry-After "
        "(deployments/http/security/shedding.py); set it below the deployment's max_ongoing_requests. Off when absent.",
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After of a shed request, in seconds.")

    @field_validator("api_keys")
    @classmethod
    def _unique_names(cls, keys: list[ApiKeySource]) -> list[ApiKeySource]:
        names = [key.name for key in keys]
        if len(set(names)) != len(names):
            raise ValueError(f"api key names must be unique, got {names}")
        if keys and all(key.optional for key in keys):
            # Optional slots are for rotations: one key must always be there, or the start fails.
            raise ValueError(f"at least one api key must be required (not optional), got only optional keys {names}")
        return keys


def key_guard(config: HttpSecurity) -> tuple[KeyRing, KeyRateLimits]:
    """The keys and their per-key rate buckets, read now: a missing env var
    or Secret file fails here, at start, naming the key (an `optional` key
    that is absent is skipped, and logged by name). A replica that also
    takes calls outside HTTP (gRPC, `admit_call`) passes the same pair to
    `install`, so one key has one bucket whatever the protocol."""
    limits = KeyRateLimits({key.name: key.rate_limit for key in config.api_keys if key.rate_limit is not None})
    return KeyRing(config.api_keys), limits


def install(app: Starlette, config: Optional[HttpSecurity | dict] = None,
            guard: Optional[tuple[KeyRing, KeyRateLimits]] = None) -> Starlette:
    """Add the three middlewares to `app` in order, with `guard`'s keys
    (default: read now, `key_guard`)."""
    config = HttpSecurity.model_validate(config or {})
    keys, limits = guard or key_guard(config)
    # add_middleware puts each one outside those added before it.
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, error_format=config.error_format)
    if config.max_in_flight is not None:
        app.add_middleware(InFlightLimit, max_in_flight=config.max_in_flight, retry_after_s=config.retry_after_s,
                           exempt_paths=config.exempt_paths, error_format=config.error_format)
    app.add_middleware(
        ApiKeyAuth, keys=keys, exempt_paths=config.exempt_paths, error_format=config.error_format,
        rate_limits=limits,
    )
    app.add_middleware(RequestId, echo=config.echo_request_id)
    return app


def bound_body(app: Starlette, error_format: ErrorFormat = "project") -> Starlette:
    """An app without an `http:` block still refuses a body over the default
    limit (1 MiB) with 413, before any of it is parsed; the rest of `install`
    (keys, request ids, shedding) stays off."""
    app.add_middleware(BodyLimit, max_bytes=HttpSecurity().max_body_bytes, error_format=error_format)
    return app


CALLER_SAMPLING_RATIO_DESCRIPTION = (
    "Of the requests whose caller's traceparent says sampled, the share traced (deployments/http/security/"
    "trace_sampling.py). Default: the Serve config's tracing_config.sampling_ratio; 1.0 follows every caller."
)


def cap_caller_sampling(app: Starlette, ratio: Optional[float] = None) -> Starlette:
    """Outermost: a caller's sampled traceparent traces at most `ratio` of its
    requests (default the Serve config's ratio), whatever else is installed."""
    app.add_middleware(CallerSamplingCap, ratio=ratio)
    return app

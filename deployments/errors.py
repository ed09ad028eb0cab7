"""Errors are part of the API: each carries its HTTP status and a JSON body
that says what happened, so every node fails the same readable way. The one
place that writes an error body (`error_body`): the graph's errors, the HTTP
layer's 422s and the security middlewares' rejections all come through it."""
from __future__ import annotations

import logging
from typing import Any, Literal

ErrorFormat = Literal["project", "openai"]

logger = logging.getLogger("ray.serve.serve_graphs.errors")


def public_reason(error: BaseException, where: str) -> str:
    """What an error body may say about a backend's or a callable's
    exception: its class (and a gRPC status code when it has one), never its
    text, which can carry hosts, ports, paths, queries or data. The text goes
    to the replica's log, with the request id, under `where`."""
    logger.warning("%s failed: %s: %s", where, type(error).__name__, str(error)[:2000])
    status = getattr(error, "status", None)
    code = status() if callable(status) else None  # tritonclient's InferenceServerException: "StatusCode.UNAVAILABLE"
    return f"{type(error).__name__} ({code})" if isinstance(code, str) and code else type(error).__name__


def error_body(
    error_format: ErrorFormat, code: str, message: str, openai_type: str = "invalid_request_error", **details: Any
) -> dict[str, Any]:
    """`project`: {"error": {"code", "message", ...details}}. `openai`: the
    OpenAI API's {"error": {"message", "type", "param", "code"}}, which the
    chat app's clients (the official `openai` package among them) expect; it
    has no room for details but `param` (the request field at fault), so they
    belong in `message` too. `openai_type`
    defaults to what api.openai.com answers for auth and size errors alike."""
    if error_format == "openai":
        return {"error": {"message": message, "type": openai_type, "param": details.get("param"), "code": code}}
    return {"error": {"code": code, "message": message, **details}}


class GraphError(Exception):
    status: int = 500
    code: str = "internal_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return error_body("project", self.code, self.message, **self.details)

    def __reduce__(self):
        """Pickled as what it is (class, message, details), whatever the
        subclass's constructor takes: a node placed in its own deployment
        raises it in another process, and the calling graph must get the same
        error (status, code, body) back, not a generic failure."""
        return _rebuild, (type(self), self.message, self.details)


def _rebuild(cls: type[GraphError], message: str, details: dict[str, Any]) -> GraphError:
    error = cls.__new__(cls)
    GraphError.__init__(error, message, **details)
    return error


class InvalidInput(GraphError):
    """422; `fields` is a list of {"field": dotted path, "reason": text}."""

    status = 422
    code = "invalid_request"

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}", fields=[{"field": field, "reason": reason}])


class NotFound(GraphError):
    """404; `missing` maps each entity key to the values nobody knows."""

    status = 404
    code = "not_found"

    def __init__(self, missing: dict[str, list[Any]]):
        listed = "; ".join(f"{key} {values}" for key, values in missing.items())
        super().__init__(f"unknown entities: {listed}", missing=missing)


class BackendUnavailable(GraphError):
    """503 with Retry-After: a backend (Triton, Feast, ...) failed or is down."""

    status = 503
    code = "backend_unavailable"
    headers = {"Retry-After": "1"}

    def __init__(self, backend: str, reason: str):
        super().__init__(f"{backend} unavailable: {reason}", backend=backend, reason=reason)


class BackendTimeout(BackendUnavailable):
    code = "backend_timeout"

    def __init__(self, backend: str, timeout_s: float):
        GraphError.__init__(
            self, f"{backend} did not answer within {timeout_s:g} s", backend=backend, timeout_s=timeout_s
        )

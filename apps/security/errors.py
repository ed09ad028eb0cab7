"""The two JSON error shapes a rejection can take, chosen per app.

The platform's own apps answer `{"error": {"code", "message", ...}}` (as
apps/http_errors.py and deployments/errors.py do); the chat app serves an
OpenAI-compatible API, whose clients (the official `openai` package among
them) expect `{"error": {"message", "type", "param", "code"}}`. A middleware
that rejects a request before the app sees it has to speak the app's shape.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

ErrorFormat = Literal["project", "openai"]


def error_body(
    error_format: ErrorFormat, code: str, message: str, openai_type: str = "invalid_request_error", **details: Any
) -> dict[str, Any]:
    """OpenAI's shape has no room for details: they belong in `message` too.
    `openai_type` defaults to what api.openai.com answers for auth and size
    errors alike."""
    if error_format == "openai":
        return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}
    return {"error": {"code": code, "message": message, **details}}


async def send_error(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    error_format: ErrorFormat,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    **details: Any,
) -> None:
    response = JSONResponse(error_body(error_format, code, message, **details), status_code=status, headers=headers)
    await response(scope, receive, send)

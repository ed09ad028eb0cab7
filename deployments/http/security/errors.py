"""A middleware's rejection, in the app's error shape: a middleware that
rejects a request before the app sees it has to speak the app's shape
(`project` or the chat app's `openai`; the bodies: deployments/errors.py).
"""
from __future__ import annotations

from typing import Any, Mapping

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from deployments.errors import ErrorFormat, error_body

__all__ = ["ErrorFormat", "error_body", "send_error"]


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

"""Request body size limit, as pure ASGI middleware.

A body larger than `max_bytes` gets 413 with a JSON body naming the limit:
at once when Content-Length says so (the body is never read), and for a
chunked body as soon as the bytes counted on arrival pass the limit (the
body is never buffered here). A Content-Length that is not one plain
non-negative integer gets 400: framing the server cannot trust is refused
rather than guessed at.

Why here and not in the app: FastAPI reads and parses the whole body before
a handler could look at its size, so without a limit any client can make a
replica hold an arbitrarily large JSON document in memory.
"""
from __future__ import annotations

import logging
import sys

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.http.security.auth import printable
from deployments.http.security.errors import ErrorFormat, send_error

logger = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    """Raised into the app from `receive` once the body passes the limit."""


def declared_length(values: list[bytes]) -> int | None:
    """The Content-Length as an int; None when malformed, negative or conflicting."""
    if len(set(values)) != 1:
        return None
    value = values[0].strip()
    if not value.isdigit():  # bytes.isdigit: ASCII 0-9 only, so no sign, space or unicode digit
        return None
    return sys.maxsize if len(value) > 18 else int(value)


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int, error_format: ErrorFormat = "project"):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes
        self.error_format = error_format

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths = [value for name, value in scope["headers"] if name == b"content-length"]
        if lengths:
            declared = declared_length(lengths)
            if declared is None:
                await send_error(
                    scope, receive, send, error_format=self.error_format, status=400, code="invalid_content_length",
                    message="Content-Length must be one non-negative integer",
                )
                return
            if declared > self.max_bytes:
                await self._too_large(scope, receive, send)
                return

        received = 0
        overflow = started = False

        async def counted_receive() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    overflow = True
                    raise BodyTooLarge(f"request body passed {self.max_bytes} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if overflow:
                return  # whatever the app answers to a cut-off body (FastAPI: 400), the answer is 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not overflow or started:
                raise  # a response already under way cannot become a 413: let the server drop the connection
        if overflow and not started:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        logger.info("rejected %s %s: body over %d bytes", printable(str(scope.get("method"))), printable(scope["path"]), self.max_bytes)
        await send_error(
            scope, receive, send, error_format=self.error_format, status=413, code="request_too_large",
            message=f"request body exceeds the limit of {self.max_bytes} bytes", limit_bytes=self.max_bytes,
        )

"""Request ids: one id per request, on the response and on every log line.

The client's `X-Request-ID` is kept when it is sane (1-128 characters of
`A-Z a-z 0-9 . _ : -`, which covers UUIDs, ULIDs and the ids proxies such as
Ray Serve's and HAProxy's generate); anything else (control characters,
spaces, quotes, 10 kB of padding) is replaced by a fresh uuid4 hex, because
the id ends up in log lines, headers and dashboards. The request then
carries the chosen id in its `x-request-id` header, in
`scope["state"]["request_id"]` and in `current_request_id` (a ContextVar, so
it follows the request's task and whatever it spawns); `RequestIdFilter`
copies it onto log records as `request_id`.

Under Ray Serve the proxy already echoes `X-Request-ID` (unchecked) and
generates one when absent, so the app sees an id in the header; `echo=False`
avoids a second response header there.
"""
from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from typing import Optional

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")

current_request_id: ContextVar[Optional[str]] = ContextVar("request_id", default=None)


def choose(given: Optional[bytes]) -> str:
    """The client's id when sane, else a new one."""
    return given.decode("ascii") if given is not None and _SANE.fullmatch(given) else uuid.uuid4().hex


class RequestId:
    def __init__(self, app: ASGIApp, *, echo: bool = True):
        self.app = app
        self.echo = echo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = choose(next((value for name, value in scope["headers"] if name == HEADER), None))
        headers = [(name, value) for name, value in scope["headers"] if name != HEADER]
        scope = {
            **scope,
            "headers": [*headers, (HEADER, request_id.encode("ascii"))],
            "state": {**scope.get("state", {}), "request_id": request_id},
        }

        async def send_with_id(message: Message) -> None:
            if self.echo and message["type"] in ("http.response.start", "websocket.accept"):
                message.setdefault("headers", [])
                MutableHeaders(scope=message)["X-Request-ID"] = request_id  # replaces, never duplicates
            await send(message)

        token = current_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to each record it sees (`-` outside a request), for
    formats such as `%(request_id)s %(message)s`. Attach it to handlers (a
    filter on a logger misses its children's records): `log_request_ids()`.
    A `request_id` already set (Ray Serve's own filter sets one) is kept
    outside a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id.get()
        if request_id is not None:
            record.request_id = request_id
        elif not hasattr(record, "request_id"):
            record.request_id = "-"
        return True


def log_request_ids(logger: logging.Logger | None = None) -> None:
    """Attach a RequestIdFilter to each handler of `logger` (default: root) that has none."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(existing, RequestIdFilter) for existing in handler.filters):
            handler.addFilter(RequestIdFilter())

"""Load shedding in the replica: at most `max_in_flight` requests run at
once; one more gets 503 at once, with `Retry-After` and a JSON body.

Why, when Serve bounds its queues (`max_ongoing_requests`,
`max_queued_requests`): Serve's own rejection is `text/plain` "Request
dropped due to backpressure" with no `Retry-After`, and it comes only once
its queue is full, so the admitted requests wait behind that queue
(docs/operations.md, Overload, has the figures). Set `max_in_flight` below the deployment's `max_ongoing_requests`:
the replica then refuses what it cannot start now, in the app's error shape,
and what it admits runs without waiting. Health paths are never shed (a
probe that fails under load would get a busy replica restarted).
"""
from __future__ import annotations

from typing import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.http.security.auth import is_exempt
from deployments.http.security.errors import ErrorFormat, send_error


class InFlightLimit:
    def __init__(self, app: ASGIApp, *, max_in_flight: int, retry_after_s: int = 1,
                 exempt_paths: Iterable[str] = (), error_format: ErrorFormat = "project"):
        if max_in_flight <= 0:
            raise ValueError(f"max_in_flight must be > 0, got {max_in_flight}")
        self.app, self.max_in_flight, self.retry_after_s = app, max_in_flight, retry_after_s
        self.exempt = frozenset(exempt_paths)
        self.error_format = error_format
        self.in_flight = 0
        self.shed = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_exempt(scope, self.exempt):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            self.shed += 1
            await send_error(
                scope, receive, send, error_format=self.error_format, status=503, code="overloaded",
                message=f"{self.max_in_flight} requests already in progress on this replica; retry after {self.retry_after_s} s",
                headers={"Retry-After": str(self.retry_after_s)}, max_in_flight=self.max_in_flight,
            )
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

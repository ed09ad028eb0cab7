"""Readiness from a cache that a background task refreshes, and a /readyz
body that says no more than its caller may know.

Why a cache: every call of /readyz used to run the checks themselves (for a
graph, a real Feast lookup and a Triton call), so the backends' load grew
with whoever polled the route, and the route is open to callers without a
key. Now the checks run every `period_s` in the background, whatever the
probe rate; /readyz, Serve's health check and the Open Inference Protocol's
ready routes read the last result. A result older than `stale_after_s` (the
checks themselves hang) counts as not ready.

Who sees what: every caller learns ready or not, and which check fails.
The details (hosts, ports, model versions, exception text) go only to a
caller with a valid API key, or to anyone when the app has no keys at all
(then every route is open anyway: a laptop on loopback), and to the log
each time a check changes state.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Optional

from fastapi.responses import JSONResponse
from starlette.types import Scope

logger = logging.getLogger(__name__)

# name -> (ready, detail)
Checks = dict[str, tuple[bool, str]]

DEFAULT_PERIOD_S = 1.0
DEFAULT_STALE_AFTER_S = 30.0


class CachedReadiness:
    """`await readiness.current()`: the checks' last result, refreshed in the
    background every `period_s` from the first call on (the first call waits
    for the first result, at most `stale_after_s`)."""

    def __init__(
        self,
        run_checks: Callable[[], Awaitable[Checks]],
        *,
        period_s: float = DEFAULT_PERIOD_S,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        name: str = "readiness",
    ):
        if period_s <= 0 or stale_after_s <= period_s:
            raise ValueError(f"need 0 < period_s < stale_after_s, got {period_s} and {stale_after_s}")
        self._run_checks = run_checks
        self.period_s = period_s
        self.stale_after_s = stale_after_s
        self.name = name
        self._checks: Optional[Checks] = None
        self._at = 0.0
        self.runs = 0  # how often the checks ran: probes do not add to it
        self._fresh: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None

    async def current(self) -> Checks:
        self._ensure_running()
        if self._checks is None:
            try:
                await asyncio.wait_for(self._fresh.wait(), self.stale_after_s)
            except TimeoutError:
                return {"readiness": (False, f"the first readiness checks did not finish within {self.stale_after_s:g} s")}
        age = time.monotonic() - self._at
        if age > self.stale_after_s:
            return {"readiness": (False, f"the readiness checks have not finished for {age:.0f} s")}
        return self._checks

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._fresh = self._fresh or asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever(), name=f"{self.name} checks")

    async def _refresh_forever(self) -> None:
        while True:
            self.runs += 1
            try:
                checks = await self._run_checks()
            except Exception as error:  # noqa: BLE001 - a failing check is a not-ready answer, not a dead loop
                checks = {"readiness": (False, f"{type(error).__name__}: {error}")}
            self._log_changes(checks)
            self._checks, self._at = checks, time.monotonic()
            self._fresh.set()
            await asyncio.sleep(self.period_s)

    def _log_changes(self, checks: Checks) -> None:
        before = self._checks or {}
        for name, (ok, detail) in checks.items():
            if name not in before or before[name][0] != ok:
                if ok:
                    logger.info("%s: %s ready (%s)", self.name, name, detail)
                else:
                    logger.warning("%s: %s not ready: %s", self.name, name, detail)


def may_see_details(scope: Scope, keys_on: bool) -> bool:
    """A caller with a valid key (ApiKeyAuth names it in the scope's state,
    on the open health paths too), or anyone when the app has no keys."""
    return not keys_on or scope.get("state", {}).get("api_key_name") is not None


def readiness_response(checks: Checks, *, detailed: bool, extra: Optional[dict[str, Any]] = None) -> JSONResponse:
    """200 when every check passes, else 503. Each check says ready or not;
    with `detailed`, also its detail and `extra` (model versions, say)."""
    ready = all(ok for ok, _ in checks.values())
    if detailed:
        body: dict[str, Any] = {"ready": ready, "checks": {name: {"ready": ok, "detail": detail} for name, (ok, detail) in checks.items()}}
        body.update(extra or {})
    else:
        body = {"ready": ready, "checks": {name: {"ready": ok} for name, (ok, _) in checks.items()}}
    return JSONResponse(body, status_code=200 if ready else 503)

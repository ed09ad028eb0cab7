"""One request as a load client saw it: when it started and ended, its
status, and for a failure what kind it was and the start of its body.

Both the benchmarks' figures and the fault tests' summaries are computed
from these, so they agree on what a success is (a 200; the apps answer 200)
and on how a failure is told apart: the apps answer errors as JSON
`{"error": {"code", "message"}}`, anything else is a body a client cannot
read, and no answer at all is a transport failure.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

SNIPPET_CHARS = 200


@dataclass(frozen=True)
class Outcome:
    """One request as the client saw it. Times are `time.monotonic()` seconds."""

    started: float
    ended: float
    status: int  # 0 when no HTTP answer came (timeout, connection failure)
    kind: str  # "ok" (200), "http_<status>", "timeout", "connection_error", "protocol_error", "transport_error"
    latency_ms: float
    error_code: str | None = None  # the body's error.code when the body is JSON with one
    body_is_json_error: bool = False  # a non-200 whose body is the apps' JSON error shape
    retry_after: str | None = None  # the Retry-After header, as sent
    body_snippet: str = ""  # start of a non-200's body, for reports

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def transport_failure(self) -> bool:
        return self.status == 0


def json_error_code(body: Any) -> str | None:
    """error.code of the apps' error shape (`{"error": {"code", "message"}}`;
    in the OpenAI format of the chat app `code` may be a number or null and
    `type` names the error), None for any other body."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    error = body["error"]
    if not isinstance(error.get("message"), str):
        return None
    if isinstance(error.get("code"), (str, int)) and not isinstance(error.get("code"), bool):
        return str(error["code"])
    if isinstance(error.get("type"), str):
        return error["type"]
    return None


def outcome_of_response(status: int, headers: Mapping[str, str], body: bytes, started: float, ended: float) -> Outcome:
    """Classify an HTTP answer: only 200 is a success (the apps answer 200).
    `headers` is looked up case-insensitively by the client's own mapping
    (aiohttp's CIMultiDict); a plain dict must spell Retry-After in lower case."""
    latency_ms = (ended - started) * 1000.0
    if status == 200:
        return Outcome(started, ended, 200, "ok", latency_ms)
    try:
        code = json_error_code(json.loads(body))
    except ValueError:  # not JSON (Serve's own plain-text 500/503, a proxy's HTML page)
        code = None
    return Outcome(
        started,
        ended,
        status,
        f"http_{status}",
        latency_ms,
        error_code=code,
        body_is_json_error=code is not None,
        retry_after=headers.get("retry-after"),
        body_snippet=body[:SNIPPET_CHARS * 4].decode("utf-8", "replace")[:SNIPPET_CHARS],
    )


def outcome_of_error(error: BaseException, started: float, ended: float) -> Outcome:
    """Classify a request that got no HTTP answer."""
    if isinstance(error, TimeoutError):  # aiohttp's own timeouts are TimeoutErrors too
        kind = "timeout"
    elif isinstance(error, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError)):
        kind = "protocol_error"  # the server hung up before or while answering, or answered garbage
    elif isinstance(error, aiohttp.ClientConnectionError):  # refused, reset
        kind = "connection_error"
    else:
        kind = "transport_error"
    return Outcome(started, ended, 0, kind, (ended - started) * 1000.0, body_snippet=repr(error)[:SNIPPET_CHARS])

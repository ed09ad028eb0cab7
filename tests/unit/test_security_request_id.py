"""Request ids: the client's X-Request-ID when sane, a fresh one otherwise;
echoed on every response (rejections included), seen by the app and stamped
on every log line of the request."""
import asyncio
import logging
import re

import pytest
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from deployments.http.security import RequestIdFilter, current_request_id, log_request_ids
from tests.unit.asgi_calls import call, call_async, tiny_app

GENERATED = re.compile(r"[0-9a-f]{32}")
KEY = "sg-primary-0123456789abcdef"


@pytest.mark.parametrize(
    "given",
    ["abc-123", "7b0c0c52-8c7e-4b0e-9a53-37a2b1c0d3e1", "01HZX3J8Q9V5K7M2N4P6R8T0W2", "svc.recommend:42_a", "x" * 128],
)
def test_a_sane_client_id_is_kept(given):
    reply = TestClient(tiny_app()).post("/v1/echo", headers={"X-Request-ID": given})
    assert reply.headers["x-request-id"] == given
    inside = reply.json()
    assert inside["state_request_id"] == inside["context_request_id"] == given
    assert inside["header_request_ids"] == [given]


def test_without_one_an_id_is_generated():
    client = TestClient(tiny_app())
    first, second = client.post("/v1/echo"), client.post("/v1/echo")
    assert GENERATED.fullmatch(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert first.json()["context_request_id"] == first.headers["x-request-id"]


@pytest.mark.parametrize(
    "given",
    [b"abc\r\nSet-Cookie: x=1", b"abc\ndef", b"x" * 129, b"", b"a b", b"<script>", "ид".encode(), b"abc\x00", b"a;b"],
    ids=["crlf", "newline", "too-long", "empty", "space", "markup", "non-ascii", "nul", "semicolon"],
)
def test_a_hostile_client_id_is_replaced(given):
    reply = call(tiny_app(), "/v1/echo", headers=[("x-request-id", given)])
    echoed = reply.header("x-request-id")
    assert GENERATED.fullmatch(echoed)
    assert reply.json()["header_request_ids"] == [echoed]  # the app never sees the hostile one
    assert reply.json()["context_request_id"] == echoed


def test_only_one_id_header_goes_out_even_when_the_app_sets_its_own():
    app = tiny_app()

    @app.get("/v1/own")
    async def own() -> JSONResponse:
        return JSONResponse({}, headers={"X-Request-ID": "the-app-s-own"})

    reply = call(app, "/v1/own", method="GET", headers=[("x-request-id", "abc")])
    assert reply.header_values("x-request-id") == ["abc"]


@pytest.mark.parametrize(
    "request_kwargs, status",
    [
        ({}, 401),  # from ApiKeyAuth
        ({"headers": {"X-API-Key": KEY}, "content": b"x" * 2000}, 413),  # from BodyLimit
        ({"headers": {"X-API-Key": KEY, "Content-Length": "-1"}}, 400),
    ],
    ids=["401", "413", "400"],
)
def test_rejections_by_the_other_middlewares_carry_the_id(monkeypatch, request_kwargs, status):
    monkeypatch.setenv("SG_KEY", KEY)
    app = tiny_app({"api_keys": [{"name": "primary", "env": "SG_KEY"}]}, max_body_bytes=1000)
    headers = [("x-request-id", "trace-me"), *request_kwargs.get("headers", {}).items()]
    reply = call(app, "/v1/echo", headers=headers, chunks=[request_kwargs.get("content", b"")])
    assert reply.status == status
    assert reply.header("x-request-id") == "trace-me"


def test_every_log_line_of_the_request_carries_its_id(monkeypatch, caplog):
    monkeypatch.setenv("SG_KEY", KEY)
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestIdFilter())
    client = TestClient(tiny_app({"api_keys": [{"name": "primary", "env": "SG_KEY"}]}))
    caplog.clear()
    served = client.post("/v1/echo", headers={"X-API-Key": KEY})
    rejected = client.post("/v1/echo")
    logging.getLogger("tests").info("between requests")
    by_message = {r.getMessage(): r.request_id for r in caplog.records}
    assert by_message["echoing 0 bytes"] == served.headers["x-request-id"]  # the app's own log line
    assert by_message["rejected POST /v1/echo: no API key"] == rejected.headers["x-request-id"]  # ApiKeyAuth's
    assert by_message["between requests"] == "-"
    assert current_request_id.get() is None


def test_the_id_is_gone_once_the_request_is_done():
    async def request_then_look() -> tuple:
        reply = await call_async(tiny_app(), "/v1/echo", headers=[(b"x-request-id", b"abc")])
        return reply.json()["context_request_id"], current_request_id.get()

    assert asyncio.run(request_then_look()) == ("abc", None)


def test_log_request_ids_attaches_one_filter_per_handler():
    logger = logging.getLogger("tests.request_id.attach")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        log_request_ids(logger)
        log_request_ids(logger)
        assert [type(f) for f in handler.filters] == [RequestIdFilter]
    finally:
        logger.removeHandler(handler)


def test_echo_can_be_left_to_a_proxy_that_already_does_it():
    reply = TestClient(tiny_app(echo_request_id=False)).post("/v1/echo", headers={"X-Request-ID": "abc"})
    assert "x-request-id" not in reply.headers
    assert reply.json()["context_request_id"] == "abc"

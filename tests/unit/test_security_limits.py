"""Body size limit: 413 naming the limit, by Content-Length before a byte is
read and by counting a chunked body as it streams; 400 on a Content-Length
that cannot be trusted."""
import pytest
from fastapi.testclient import TestClient

from tests.unit.asgi_calls import call, tiny_app

LIMIT = 1000


@pytest.fixture
def app():
    return tiny_app(max_body_bytes=LIMIT)


def test_a_body_at_the_limit_passes(app):
    by_length = call(app, "/v1/echo", headers=[("content-length", str(LIMIT))], chunks=[b"x" * LIMIT])
    chunked = call(app, "/v1/echo", chunks=[b"x" * 400, b"x" * 400, b"x" * 200])
    assert (by_length.status, by_length.json()["bytes"]) == (200, LIMIT)
    assert (chunked.status, chunked.json()["bytes"]) == (200, LIMIT)


def test_content_length_over_the_limit_is_413_before_the_body_is_read(app):
    reply = call(app, "/v1/echo", headers=[("content-length", str(LIMIT + 1))], chunks=[b"x" * (LIMIT + 1)])
    assert reply.status == 413
    assert reply.chunks_read == 0
    assert reply.json() == {
        "error": {"code": "request_too_large", "message": f"request body exceeds the limit of {LIMIT} bytes", "limit_bytes": LIMIT}
    }


def test_a_chunked_body_over_the_limit_is_413_as_soon_as_it_passes(app):
    # 100 chunks of 400 bytes, no Content-Length: the third chunk passes 1000 bytes,
    # and nothing after it is read (the body is counted, not buffered).
    reply = call(app, "/v1/echo", chunks=[b"x" * 400] * 100)
    assert reply.status == 413
    assert reply.chunks_read == 3
    assert reply.json()["error"]["limit_bytes"] == LIMIT
    assert [m["status"] for m in reply.sent if m["type"] == "http.response.start"] == [413]  # the app's own answer is dropped


def test_413_even_when_the_app_parses_the_body_and_answers_first(app):
    # FastAPI turns an error while reading a JSON body into its own 400; the
    # client still gets the 413, and only the 413.
    body = b"[" + b"1," * 2000 + b"1]"
    reply = call(app, "/v1/items", headers=[("content-type", "application/json")], chunks=[body[i : i + 300] for i in range(0, len(body), 300)])
    assert [m["status"] for m in reply.sent if m["type"] == "http.response.start"] == [413]
    assert reply.chunks_read == 4


def test_a_body_longer_than_its_content_length_is_still_counted(app):
    reply = call(app, "/v1/echo", headers=[("content-length", "10")], chunks=[b"x" * 600, b"x" * 600])
    assert reply.status == 413


def test_413_through_a_real_client(app):
    reply = TestClient(app).post("/v1/echo", content=b"x" * (LIMIT + 1))
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    "values",
    [[b"-1"], [b"abc"], [b"1e3"], [b""], [b"+5"], [b"12, 12"], ["٣".encode()], [b"5", b"6"]],
    ids=["negative", "letters", "exponent", "empty", "plus-sign", "list", "arabic-digit", "conflicting"],
)
def test_a_malformed_content_length_is_400(app, values):
    reply = call(app, "/v1/echo", headers=[("content-length", v) for v in values], chunks=[b"12345"])
    assert reply.status == 400
    assert reply.chunks_read == 0
    assert reply.json()["error"]["code"] == "invalid_content_length"


def test_a_huge_content_length_is_413_not_a_crash(app):
    assert call(app, "/v1/echo", headers=[("content-length", "9" * 5000)]).status == 413


def test_openai_format_names_the_limit_in_the_message():
    reply = TestClient(tiny_app(max_body_bytes=LIMIT, error_format="openai")).post("/v1/echo", content=b"x" * 2000)
    assert reply.status_code == 413
    assert reply.json() == {
        "error": {
            "message": f"request body exceeds the limit of {LIMIT} bytes",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }


def test_past_max_in_flight_a_request_is_shed_at_once_with_retry_after():
    import asyncio

    from deployments.http.security import InFlightLimit

    release = asyncio.Event()

    async def slow(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limit = InFlightLimit(slow, max_in_flight=2, retry_after_s=3, exempt_paths=["/healthz"])

    async def scenario():
        def request(path):
            sent = []

            async def receive():
                return {"type": "http.request", "body": b""}

            async def send(message):
                sent.append(message)

            return sent, limit({"type": "http", "path": path, "root_path": "/app", "method": "POST", "headers": []}, receive, send)

        running = [request("/app/") for _ in range(2)]
        tasks = [asyncio.ensure_future(call) for _, call in running]
        await asyncio.sleep(0)
        shed_sent, shed = request("/app/")
        await shed  # answered at once, while the two above still run
        probe_sent, probe = request("/app/healthz")
        probe_task = asyncio.ensure_future(probe)  # a probe is never shed: it waits like the others
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*tasks, probe_task)
        after_sent, after = request("/app/")
        await after
        return [s for s, _ in running], shed_sent, probe_sent, after_sent

    running, shed, probe, after = asyncio.run(scenario())
    start = shed[0]
    assert start["status"] == 503 and (b"retry-after", b"3") in start["headers"]
    assert b'"code":"overloaded"' in shed[1]["body"] and b'"max_in_flight":2' in shed[1]["body"]
    assert [s[0]["status"] for s in running] == [200, 200]
    assert probe[0]["status"] == 200 and after[0]["status"] == 200
    assert (limit.in_flight, limit.shed) == (0, 1)

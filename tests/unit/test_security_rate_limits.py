"""Per-key rate limits: a key over its rate gets 429 with Retry-After in the
app's error shape; other keys, and the key once its bucket drains, are not
affected; a key without a limit is never limited."""
import asyncio

import pytest
from pydantic import ValidationError

from deployments.http.security import HttpSecurity, KeyRateLimits, RateLimit
from tests.unit.asgi_calls import call_async, tiny_app

LIMITED, FREE = "sg-limited-0123456789abcdef", "sg-free-0123456789abcdefXY"


@pytest.fixture
def config(monkeypatch) -> dict:
    monkeypatch.setenv("SG_KEY_LIMITED", LIMITED)
    monkeypatch.setenv("SG_KEY_FREE", FREE)
    return {"api_keys": [
        {"name": "limited", "env": "SG_KEY_LIMITED", "rate_limit": {"requests_per_s": 20, "burst": 3}},
        {"name": "free", "env": "SG_KEY_FREE"},
    ]}


def statuses(app, key: str, n: int) -> list[int]:
    async def go():
        return [(await call_async(app, "/v1/echo", headers=[(b"x-api-key", key.encode())])).status for _ in range(n)]

    return asyncio.run(go())


def test_a_key_over_its_burst_gets_429_and_the_others_do_not(config):
    app = tiny_app(config)
    assert statuses(app, LIMITED, 5) == [200, 200, 200, 429, 429]
    assert statuses(app, FREE, 20) == [200] * 20, "a key without a rate is never limited, whatever the others do"


def test_the_429_says_when_to_retry_in_the_apps_shape(config):
    app = tiny_app(config)

    async def go():
        replies = [await call_async(app, "/v1/echo", headers=[(b"x-api-key", LIMITED.encode())]) for _ in range(4)]
        return replies[-1]

    refused = asyncio.run(go())
    assert refused.status == 429 and refused.header("retry-after") == "1"
    assert refused.json() == {"error": {
        "code": "rate_limit_exceeded", "message": "API key 'limited' is over its rate (20 requests/s, burst 3); retry after 1 s"}}
    openai = tiny_app({**config, "error_format": "openai"})

    async def go_openai():
        return [await call_async(openai, "/v1/echo", headers=[(b"authorization", b"Bearer " + LIMITED.encode())]) for _ in range(4)][-1]

    assert asyncio.run(go_openai()).json()["error"]["type"] == "requests"


def test_the_bucket_drains_at_the_rate():
    limits = KeyRateLimits({"k": RateLimit(requests_per_s=20, burst=2)})

    async def go():
        first = [await limits.admit("k") for _ in range(3)]
        await asyncio.sleep(0.06)  # at least 1.2 requests' worth drained
        return first, await limits.admit("k")

    first, later = asyncio.run(go())
    assert first == [None, None, 1] and later is None


def test_unknown_names_and_no_limits_admit():
    assert asyncio.run(KeyRateLimits({}).admit("anyone")) is None
    assert not KeyRateLimits({})


def test_health_paths_are_not_counted(config):
    app = tiny_app(config)

    async def go():
        for _ in range(10):
            assert (await call_async(app, "/healthz", method="GET", headers=[(b"x-api-key", LIMITED.encode())])).status == 200
        return (await call_async(app, "/v1/echo", headers=[(b"x-api-key", LIMITED.encode())])).status

    assert asyncio.run(go()) == 200


@pytest.mark.parametrize("rate, problem", [
    ({"requests_per_s": 0}, "greater than 0"),
    ({"requests_per_s": 5, "burst": 0}, "greater than or equal to 1"),
    ({"requests_per_s": 5, "brust": 9}, "Extra inputs are not permitted"),
])
def test_bad_rate_settings_are_refused_naming_the_field(rate, problem):
    with pytest.raises(ValidationError, match=problem) as caught:
        HttpSecurity.model_validate({"api_keys": [{"name": "k", "env": "K", "rate_limit": rate}]})
    assert "api_keys.0.rate_limit" in str(caught.value)


def test_defaults_and_retry_after():
    assert RateLimit(requests_per_s=2.5).burst == 3, "default burst: one second's worth"
    assert RateLimit(requests_per_s=0.25, burst=1).retry_after_s == 4
    assert RateLimit(requests_per_s=100).retry_after_s == 1

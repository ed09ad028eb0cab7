"""Readiness: the checks run in the background at a fixed period, whatever
the probe rate; /readyz says ready or not and which check fails to anyone,
and each check's detail (hosts, versions, exception text) only to a caller
with a valid key, or to anyone when the app has no keys."""
import asyncio
import json
import logging

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from deployments.http import security
from deployments.http.readiness import CachedReadiness, may_see_details, readiness_response

KEY = "sg-readiness-0123456789abcdef"


class Backend:
    """Checks that count their runs; `state` says what the next run answers."""

    def __init__(self):
        self.runs = 0
        self.state = "up"  # up, down, raise, hang

    async def checks(self) -> dict:
        self.runs += 1
        if self.state == "raise":
            raise ConnectionError("triton at 10.0.0.7:8001 refused")
        if self.state == "hang":
            await asyncio.sleep(3600)
        up = self.state == "up"
        return {"features": (True, "sqlite store answers"), "ranker": (up, "version 3 at 10.0.0.7:8001" if up else "10.0.0.7:8001 unreachable")}


def test_probes_read_the_last_result_and_do_not_run_the_checks():
    backend = Backend()

    async def scenario():
        readiness = CachedReadiness(backend.checks, period_s=0.2, stale_after_s=2)
        results = [await readiness.current() for _ in range(100)]  # a probe storm inside one period
        runs_during_storm = backend.runs
        await asyncio.sleep(0.5)  # two more periods
        runs_later = backend.runs
        await readiness.close()
        return results, runs_during_storm, runs_later

    results, during, later = asyncio.run(scenario())
    assert during == 1, "100 probes ran the checks once: the first call waits for the first result"
    assert 2 <= later <= 5, f"then once per period in the background, {later} runs in ~0.5 s at 0.2 s"
    assert all(r["ranker"][0] for r in results)


def test_a_failing_check_turns_not_ready_and_back_logging_each_change_once(caplog):
    backend = Backend()

    async def scenario():
        readiness = CachedReadiness(backend.checks, period_s=0.05, stale_after_s=2, name="graph recommend")
        assert all(ok for ok, _ in (await readiness.current()).values())
        backend.state = "down"
        await asyncio.sleep(0.3)
        down = await readiness.current()
        backend.state = "raise"
        await asyncio.sleep(0.2)
        raised = await readiness.current()
        backend.state = "up"
        await asyncio.sleep(0.2)
        up = await readiness.current()
        await readiness.close()
        return down, raised, up

    with caplog.at_level(logging.INFO, logger="deployments.http.readiness"):
        down, raised, up = asyncio.run(scenario())
    assert down["ranker"] == (False, "10.0.0.7:8001 unreachable") and down["features"][0]
    assert raised == {"readiness": (False, "ConnectionError: triton at 10.0.0.7:8001 refused")}, "a check that raises is an answer, not a dead loop"
    assert all(ok for ok, _ in up.values())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings.count("graph recommend: ranker not ready: 10.0.0.7:8001 unreachable") == 1, warnings


def test_checks_that_hang_count_as_not_ready_once_stale():
    backend = Backend()

    async def scenario():
        readiness = CachedReadiness(backend.checks, period_s=0.05, stale_after_s=0.3)
        fresh = await readiness.current()
        backend.state = "hang"
        await asyncio.sleep(0.5)
        stale = await readiness.current()
        await readiness.close()
        first = CachedReadiness(backend.checks, period_s=0.05, stale_after_s=0.2)
        never = await first.current()  # the very first run hangs: the caller waits stale_after_s, no longer
        await first.close()
        return fresh, stale, never

    fresh, stale, never = asyncio.run(scenario())
    assert all(ok for ok, _ in fresh.values())
    assert list(stale) == ["readiness"] and not stale["readiness"][0] and "have not finished for" in stale["readiness"][1]
    assert never == {"readiness": (False, "the first readiness checks did not finish within 0.2 s")}


def test_a_period_longer_than_staleness_is_refused():
    with pytest.raises(ValueError, match="period_s < stale_after_s"):
        CachedReadiness(Backend().checks, period_s=5, stale_after_s=5)


def test_the_quiet_body_names_the_failing_check_without_its_detail():
    checks = {"features": (True, "sqlite store answers"), "ranker": (False, "10.0.0.7:8001 unreachable")}
    quiet = readiness_response(checks, detailed=False, extra={"model": "ranker v3"})
    assert quiet.status_code == 503
    assert json.loads(quiet.body) == {"ready": False, "checks": {"features": {"ready": True}, "ranker": {"ready": False}}}
    detailed = readiness_response(checks, detailed=True, extra={"model": "ranker v3"})
    assert json.loads(detailed.body) == {
        "ready": False, "model": "ranker v3",
        "checks": {"features": {"ready": True, "detail": "sqlite store answers"}, "ranker": {"ready": False, "detail": "10.0.0.7:8001 unreachable"}},
    }
    assert readiness_response({"ranker": (True, "v3")}, detailed=False).status_code == 200


def app_with_readyz(keys_on: bool, monkeypatch) -> TestClient:
    """A /readyz as the graph and chat apps answer it, behind the API-key middleware."""
    backend = Backend()
    backend.state = "down"
    app = FastAPI()
    readiness = CachedReadiness(backend.checks, period_s=0.05)

    @app.get("/readyz")
    async def readyz(request: Request):
        return readiness_response(await readiness.current(), detailed=may_see_details(request.scope, keys_on))

    monkeypatch.setenv("SG_KEY_READINESS", KEY)
    config = {"api_keys": [{"name": "ops", "env": "SG_KEY_READINESS"}]} if keys_on else {}
    return TestClient(security.install(app, config))


def test_with_keys_only_a_keyed_caller_sees_the_details(monkeypatch):
    with app_with_readyz(keys_on=True, monkeypatch=monkeypatch) as client:
        anonymous = client.get("/readyz")
        assert anonymous.status_code == 503, "the route stays open to probes"
        assert anonymous.json() == {"ready": False, "checks": {"features": {"ready": True}, "ranker": {"ready": False}}}
        assert "10.0.0.7" not in anonymous.text
        wrong = client.get("/readyz", headers={"Authorization": "Bearer sg-readiness-0123456789abcdeX"})
        assert wrong.status_code == 503 and "detail" not in wrong.text, "a wrong key is no key: open, and quiet"
        keyed = client.get("/readyz", headers={"X-API-Key": KEY})
        assert keyed.json()["checks"]["ranker"] == {"ready": False, "detail": "10.0.0.7:8001 unreachable"}


def test_without_keys_every_caller_sees_the_details(monkeypatch):
    with app_with_readyz(keys_on=False, monkeypatch=monkeypatch) as client:
        assert client.get("/readyz").json()["checks"]["ranker"]["detail"] == "10.0.0.7:8001 unreachable"

"""The closed-loop load generator of bench/: how one answer is recorded
(bench/outcomes.py), and the benchmarks' figures of a timed run
(bench/figures.py), which the fault tests' load (tests/fault_load.py) shares.
"""
from __future__ import annotations

import asyncio
import json
import math

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from bench.figures import Result, run
from bench.outcomes import Outcome, outcome_of_error, outcome_of_response
from tests.servers import free_port
from tests.unit.toggle_server import JSON_503, ToggleServer


# -- classifying one answer ---------------------------------------------------


def answer(status: int, body: object = None, *, text: str | None = None, headers: dict[str, str] | None = None, at=(0.0, 1.0)) -> Outcome:
    content = text.encode() if text is not None else json.dumps(body).encode()
    return outcome_of_response(status, headers or {}, content, *at)


def test_classifies_answers_by_status_and_body_shape():
    shed = answer(503, JSON_503, headers={"retry-after": "2"}, at=(1.0, 1.25))  # aiohttp's headers are case-insensitive
    assert (shed.status, shed.kind, shed.error_code, shed.body_is_json_error, shed.retry_after) == (
        503, "http_503", "overloaded", True, "2")
    assert shed.latency_ms == pytest.approx(250.0) and not shed.ok

    plain = answer(500, text="Internal Server Error", at=(1.0, 1.1))
    assert (plain.kind, plain.error_code, plain.body_is_json_error, plain.retry_after) == ("http_500", None, False, None)
    assert plain.body_snippet == "Internal Server Error"
    assert len(answer(502, text="é" * 1000).body_snippet) == 200  # cut by characters, multi-byte ones whole
    # JSON, but not the apps' shape (FastAPI's default 422 body; an error without a message)
    assert not answer(422, {"detail": [{"loc": ["body"]}]}).body_is_json_error
    assert not answer(500, {"error": {"code": "x"}}).body_is_json_error
    assert answer(200, {"items": []}).ok


def test_classifies_requests_that_got_no_answer():
    assert outcome_of_error(aiohttp.ServerTimeoutError("slow"), 0, 1).kind == "timeout"
    assert outcome_of_error(TimeoutError(), 0, 1).kind == "timeout"  # the hard per-request deadline
    refused = outcome_of_error(aiohttp.ClientConnectorError(ConnectionKey("127.0.0.1", 1, False, True, None, None, None), ConnectionRefusedError()), 0, 1)
    assert (refused.kind, refused.status, refused.transport_failure) == ("connection_error", 0, True)
    assert outcome_of_error(aiohttp.ClientOSError(104, "reset"), 0, 1).kind == "connection_error"
    assert outcome_of_error(aiohttp.ServerDisconnectedError(), 0, 1).kind == "protocol_error"
    assert outcome_of_error(aiohttp.ClientPayloadError("cut short"), 0, 1).kind == "protocol_error"
    assert outcome_of_error(aiohttp.InvalidURL("x"), 0, 1).kind == "transport_error"


# -- the benchmarks' figures ------------------------------------------------


def test_figures_count_successes_and_failures_apart():
    outcomes = [Outcome(0, ms / 1000, 200, "ok", float(ms)) for ms in range(1, 101)]  # 1..100 ms
    outcomes += [Outcome(0, 0.001, 503, "http_503", 1.0), Outcome(0, 5.0, 0, "timeout", 5000.0)]
    result = Result.of(8, outcomes, seconds=2.0)
    assert (result.concurrency, result.ok, result.failed, result.seconds) == (8, 100, 2, 2.0)
    # numpy's linear percentiles of the successes only: the failures' latencies have no say
    assert (result.p50_ms, result.p95_ms, result.p99_ms) == (pytest.approx(50.5), pytest.approx(95.05), pytest.approx(99.01))
    assert result.rps == pytest.approx(50.0)
    nothing = Result.of(1, outcomes[-2:], seconds=1.0)
    assert (nothing.ok, nothing.failed, nothing.rps) == (0, 2, 0.0) and math.isnan(nothing.p50_ms)


def test_a_timed_run_measures_the_endpoint_and_counts_what_failed():
    with ToggleServer() as server:
        healthy = asyncio.run(run(server.url, concurrency=2, seconds=0.3, warmup=3))
        assert healthy.concurrency == 2 and healthy.ok > 0 and healthy.failed == 0
        assert 0 < healthy.p50_ms <= healthy.p95_ms <= healthy.p99_ms
        assert healthy.seconds >= 0.3 and healthy.rps == pytest.approx(healthy.ok / healthy.seconds)

        server.toggle.mode = "failing"
        shed = asyncio.run(run(server.url, concurrency=2, seconds=0.2, warmup=1))
        assert shed.ok == 0 and shed.failed > 0 and math.isnan(shed.p99_ms)
    # nothing listening: refused connections are failures too, not a crash of the run
    refused = asyncio.run(run(f"http://127.0.0.1:{free_port()}/recommend", concurrency=1, seconds=0.1, warmup=1))
    assert refused.ok == 0 and refused.failed > 0

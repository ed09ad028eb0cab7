"""The closed-loop load generator of bench/: how one answer is recorded
(bench/outcomes.py), and the benchmarks' figures of a timed run
(bench/figures.py), which the fault tests' load (tests/fault_load.py) shares.
"""
from __future__ import annotations

import asyncio
import math

import httpx
import pytest

from bench.figures import Result, run
from bench.outcomes import Outcome, outcome_of_error, outcome_of_response
from tests.servers import free_port
from tests.unit.toggle_server import JSON_503, ToggleServer


# -- classifying one answer ---------------------------------------------------


def test_classifies_answers_by_status_and_body_shape():
    shed = outcome_of_response(httpx.Response(503, json=JSON_503, headers={"Retry-After": "2"}), 1.0, 1.25)
    assert (shed.status, shed.kind, shed.error_code, shed.body_is_json_error, shed.retry_after) == (
        503, "http_503", "overloaded", True, "2")
    assert shed.latency_ms == pytest.approx(250.0) and not shed.ok

    plain = outcome_of_response(httpx.Response(500, text="Internal Server Error"), 1.0, 1.1)
    assert (plain.kind, plain.error_code, plain.body_is_json_error, plain.retry_after) == ("http_500", None, False, None)
    assert plain.body_snippet == "Internal Server Error"
    # JSON, but not the apps' shape (FastAPI's default 422 body; an error without a message)
    assert not outcome_of_response(httpx.Response(422, json={"detail": [{"loc": ["body"]}]}), 0, 1).body_is_json_error
    assert not outcome_of_response(httpx.Response(500, json={"error": {"code": "x"}}), 0, 1).body_is_json_error
    assert outcome_of_response(httpx.Response(200, json={"items": []}), 0, 1).ok

    assert outcome_of_error(httpx.ReadTimeout("slow"), 0, 1).kind == "timeout"
    assert outcome_of_error(TimeoutError(), 0, 1).kind == "timeout"  # the hard per-request deadline
    refused = outcome_of_error(httpx.ConnectError("refused"), 0, 1)
    assert (refused.kind, refused.status, refused.transport_failure) == ("connection_error", 0, True)
    assert outcome_of_error(httpx.RemoteProtocolError("hung up"), 0, 1).kind == "protocol_error"


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

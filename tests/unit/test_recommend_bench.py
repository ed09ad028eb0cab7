"""The recommend benchmark's measuring: servers are measured in alternating
slices, so that a host that slows down during the run weighs on each alike,
and each server's slices are pooled into one figure per level."""
from __future__ import annotations

import os

import pytest

import bench.recommend_bench as recommend_bench
from bench.outcomes import Outcome
from bench.recommend_bench import Server, measure_interleaved


def test_servers_are_measured_in_alternating_slices_and_pooled(monkeypatch):
    calls: list[tuple[str, int, float, int]] = []
    latency_ms = {"http://a/recommend": 5.0, "http://b/recommend": 7.0}

    async def fake_run_outcomes(url, concurrency, seconds, warmup=20, make_payload=None, seed=0):
        calls.append((url, concurrency, seconds, seed))
        return [Outcome(0, 0.0, 200, "ok", latency_ms[url])] * 10, 0.5

    async def fake_run(url, concurrency, seconds, warmup=20, make_payload=None):
        calls.append((url, concurrency, seconds, -1))  # the unmeasured warm-up

    monkeypatch.setattr(recommend_bench, "run_outcomes", fake_run_outcomes)
    monkeypatch.setattr(recommend_bench, "run", fake_run)
    servers = [Server("baseline", "http://a/recommend", {"server": os.getpid()}),
               Server("platform", "http://b/recommend", {"server": os.getpid()})]

    results, cpu = measure_interleaved(servers, levels=[1, 8], seconds=3.0, warmup_s=2.0, slices=3)

    level_1 = [(url[7], seconds, seed) for url, concurrency, seconds, seed in calls if concurrency == 1]
    # warm-up of each, then slices of a third each: a b, b a, a b (a different seed per slice)
    assert level_1 == [("a", 2.0, -1), ("b", 2.0, -1),
                       ("a", 1.0, 0), ("b", 1.0, 0), ("b", 1.0, 1), ("a", 1.0, 1), ("a", 1.0, 2), ("b", 1.0, 2)]
    assert [r.concurrency for r in results["platform"]] == [1, 8]
    pooled = results["platform"][0]
    assert (pooled.ok, pooled.failed, pooled.seconds, pooled.p50_ms) == (30, 0, 1.5, 7.0)
    assert pooled.rps == pytest.approx(20.0)
    assert results["baseline"][1].p50_ms == 5.0
    assert set(cpu) == {"baseline", "platform"} and set(cpu["platform"]) == {1, 8}
    assert all(us >= 0 for us in cpu["platform"][8].values())

"""Closed-loop HTTP load: `concurrency` clients each send the next request as
soon as the last one answered, for a fixed time. Latency percentiles and
throughput of successful requests; non-200 answers are counted, not hidden."""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import httpx
import numpy as np


@dataclass
class Result:
    concurrency: int
    ok: int
    failed: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.ok / self.seconds


def payload(rng: random.Random) -> dict:
    start = rng.randint(1, 480)
    return {"user_id": rng.randint(1, 1000), "item_ids": list(range(start, start + 20)), "k": 5}


async def run(url: str, concurrency: int, seconds: float, warmup: int = 20) -> Result:
    latencies: list[float] = []
    failed = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        rng = random.Random(concurrency)
        for _ in range(warmup):
            await client.post(url, json=payload(rng))
        deadline = time.perf_counter() + seconds

        async def worker(seed: int) -> None:
            nonlocal failed
            local = random.Random(seed)
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post(url, json=payload(local))
                if response.status_code == 200:
                    latencies.append((time.perf_counter() - started) * 1000.0)
                else:
                    failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if latencies else (float("nan"),) * 3
    return Result(concurrency, len(latencies), failed, elapsed, float(p50), float(p95), float(p99))

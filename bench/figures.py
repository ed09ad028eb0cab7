"""The benchmarks' figures: latency percentiles and throughput of a timed
closed-loop run (bench/loadgen.py) against a `/recommend`-shaped endpoint.

Latency and throughput count successful requests only; the others are
counted as failed, not hidden, so a fast figure made of errors shows.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bench.loadgen import ClosedLoop, GrpcClosedLoop
from bench.outcomes import Outcome

# Generous: a benchmark measures a server that answers, and a request this
# slow counts as failed rather than stretching the run.
REQUEST_TIMEOUT_S = 30.0


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

    @classmethod
    def of(cls, concurrency: int, outcomes: Sequence[Outcome], seconds: float) -> Result:
        """numpy's (linear) percentiles of the successes' latencies; NaN without any."""
        latencies = [o.latency_ms for o in outcomes if o.ok]
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if latencies else (float("nan"),) * 3
        return cls(concurrency, len(latencies), len(outcomes) - len(latencies), seconds, float(p50), float(p95), float(p99))


def payload(rng: random.Random) -> dict:
    """A /recommend request: a random user and 20 consecutive candidates."""
    start = rng.randint(1, 480)
    return {"user_id": rng.randint(1, 1000), "item_ids": list(range(start, start + 20)), "k": 5}


def v2_payload(rng: random.Random) -> dict:
    """The same request as `payload`, as the Open Inference Protocol's infer
    body (POST <graph>/v2/models/recommend/infer)."""
    body = payload(rng)
    return {"inputs": [
        {"name": "user_id", "datatype": "INT64", "shape": [1], "data": [body["user_id"]]},
        {"name": "item_ids", "datatype": "INT64", "shape": [len(body["item_ids"])], "data": body["item_ids"]},
        {"name": "k", "datatype": "INT64", "shape": [1], "data": [body["k"]]},
    ]}


def grpc_payload(rng: random.Random):
    """The same request as `payload`, as a ModelInferRequest of the Open
    Inference Protocol's gRPC service, tensors in `raw_input_contents` (as
    `tritonclient.grpc` sends them)."""
    from tritonclient.grpc import service_pb2

    body = payload(rng)
    request = service_pb2.ModelInferRequest(model_name="recommend")
    for name, values in (("user_id", [body["user_id"]]), ("item_ids", body["item_ids"]), ("k", [body["k"]])):
        request.inputs.add(name=name, datatype="INT64", shape=[len(values)])
        request.raw_input_contents.append(np.asarray(values, dtype="<i8").tobytes())
    return request


async def run(url: str, concurrency: int, seconds: float, warmup: int = 20,
              make_payload: Callable[[random.Random], dict] = payload) -> Result:
    """`warmup` requests one after another (not measured), then `concurrency`
    clients for `seconds`; each client draws its payloads from its own seeded
    generator, so that runs send the same mix of users and candidates."""
    outcomes, elapsed = await run_outcomes(url, concurrency, seconds, warmup, make_payload)
    return Result.of(concurrency, outcomes, elapsed)


async def run_outcomes(url: str, concurrency: int, seconds: float, warmup: int = 20,
                       make_payload: Callable[[random.Random], dict] = payload,
                       seed: int = 0) -> tuple[list[Outcome], float]:
    """`run`'s outcomes and its measured seconds, to be pooled with other
    runs' (one Result of several interleaved slices). `seed` offsets the
    clients' generators, so that slices send different requests."""
    load = (GrpcClosedLoop(url.removeprefix("grpc://"), concurrency, REQUEST_TIMEOUT_S, headers={"application": "recommend"})
            if url.startswith("grpc://") else ClosedLoop(url, concurrency, REQUEST_TIMEOUT_S))
    outcomes: list[Outcome] = []
    async with load.client() as client:
        rng = random.Random(concurrency + seed)
        for _ in range(warmup):
            await load.send(client, make_payload(rng))
        generators = [random.Random(seed * 1000 + index) for index in range(concurrency)]
        deadline = time.monotonic() + seconds
        started = time.monotonic()
        await load.run(
            client,
            lambda index: make_payload(generators[index]),
            may_start=lambda: time.monotonic() < deadline,
            record=outcomes.append,
        )
        elapsed = time.monotonic() - started
    return outcomes, elapsed

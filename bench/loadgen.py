"""Closed-loop HTTP load: `clients` clients, each sending its next POST as
soon as its last one answered, every request recorded as an `Outcome`
(bench/outcomes.py) with its timing, status and body snippet.

The one load generator of the project: the benchmarks (bench/figures.py)
turn its outcomes into latency percentiles and throughput, the fault tests
(tests/fault_load.py) into error windows and a contract. What it leaves to
its caller is when to stop (`may_start`, asked before every request), what
to send (`payload`) and where the outcomes go (`record`).

A closed loop, not a fixed arrival rate: a slow server gets fewer requests,
so the figures are latency at a concurrency, not at an offered load.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.outcomes import Outcome, outcome_of_error, outcome_of_response

# Each request is cancelled this long after the client timeout at the
# latest, whatever the client library does with its own timeout, so that no
# request, and no run, lasts unbounded.
HARD_DEADLINE_EXTRA_S = 1.0

# The body of a client's next request, given the client's index (0 to clients - 1).
Payload = Callable[[int], Any]


@dataclass(frozen=True)
class ClosedLoop:
    """Where the load goes and with how many clients.

        load = ClosedLoop(url, clients=8, request_timeout_s=30)
        async with load.client() as client:
            await load.run(client, payload, may_start=lambda: time.monotonic() < deadline, record=outcomes.append)
    """

    url: str
    clients: int
    request_timeout_s: float
    headers: Mapping[str, str] = field(default_factory=dict)

    def client(self) -> aiohttp.ClientSession:
        """One connection pool for all clients, a kept-alive connection each.

        aiohttp, not httpx: the client shares the cores with the servers it
        measures, and httpx spent about 1.4 ms of CPU per request here
        (aiohttp 0.14 ms), most of a core at the benchmarks' rates.
        trust_env=False: the endpoints are on loopback, and a proxy from the
        environment would put its own errors and latency in the results."""
        connector = aiohttp.TCPConnector(limit=self.clients)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)

    async def send(self, client: aiohttp.ClientSession, body: Any) -> Outcome:
        """One POST, whatever becomes of it: an answer or an error, never an
        exception (but cancellation)."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.request_timeout_s + HARD_DEADLINE_EXTRA_S):
                async with client.post(self.url, json=body, headers=self.headers) as response:
                    content = await response.read()
            return outcome_of_response(response.status, response.headers, content, started, time.monotonic())
        except (aiohttp.ClientError, TimeoutError) as error:
            return outcome_of_error(error, started, time.monotonic())

    async def run(
        self,
        client: aiohttp.ClientSession,
        payload: Payload,
        *,
        may_start: Callable[[], bool],
        record: Callable[[Outcome], None],
        pause: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Run the clients until `may_start()` says no to each of them; the
        requests in flight then answer first. `pause` runs between a client's
        requests (think time). What `payload` or `record` raise ends the run,
        as a TaskGroup's ExceptionGroup."""

        async def one_client(index: int) -> None:
            while may_start():
                record(await self.send(client, payload(index)))
                if pause is not None:
                    await pause()

        async with asyncio.TaskGroup() as group:
            for index in range(self.clients):
                group.create_task(one_client(index))


# A gRPC status as the HTTP status the apps would answer, for the outcomes'
# classes (deployments/graph/oip_grpc.py maps the other way).
_HTTP_STATUS_OF_GRPC = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
                        "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503}


@dataclass(frozen=True)
class GrpcClosedLoop(ClosedLoop):
    """The same closed loop over the Open Inference Protocol's gRPC service:
    `url` is host:port, `headers` the calls' metadata (`application`), each
    body a ModelInferRequest. One channel (one HTTP/2 connection) carries all
    clients' calls, as one `tritonclient.grpc` client would."""

    @asynccontextmanager
    async def client(self):  # type: ignore[override]
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        async with grpc.aio.insecure_channel(self.url) as channel:
            yield service_pb2_grpc.GRPCInferenceServiceStub(channel)

    async def send(self, client: Any, body: Any) -> Outcome:
        import grpc

        started = time.monotonic()
        try:
            await client.ModelInfer(body, metadata=tuple(self.headers.items()), timeout=self.request_timeout_s)
        except grpc.aio.AioRpcError as error:
            ended = time.monotonic()
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return outcome_of_error(TimeoutError(error.details()), started, ended)
            status = _HTTP_STATUS_OF_GRPC.get(error.code().name, 500)
            return outcome_of_response(status, {}, (error.details() or "").encode(), started, ended)
        return outcome_of_response(200, {}, b"", started, time.monotonic())

"""Batching across requests: concurrent calls of one node, in one replica
(or one notebook process), merged into one backend call and split back.

    features:
      kind: feature_lookup
      batch: {max_batch_size: 512, max_wait_ms: 2}

A request that finds the node idle is sent at once, alone: nothing waits
when there is nothing to wait for. Requests that arrive while a call of the
node is in flight gather, and go as one call when the node is idle again,
when `max_wait_ms` has passed since the first of them arrived, or when they
fill `max_batch_size` rows, whichever comes first.

Why not `@serve.batch`: it runs only inside a Serve replica (it asks for
the replica's context; graphs also run in-process, in notebooks), it makes a
lone request wait out its timeout, and it counts requests against the
deployment's `max_ongoing_requests` where a graph node counts rows (one
recommend request is a hundred items). The metrics mirror its own:
`graph_node_batch_rows` and `graph_node_batch_wait_ms` per node.

A node kind that batches gives `Batcher` a function from a list of items to
a list of results in the same order, where a result may be `Failed`: that
request fails alone, with its own error, and the others answer. With
`timeout_s`, a request that waits in a batch is bounded by its own timeout,
counted from its arrival: behind a call that stalls, it fails with
`on_timeout()` when its time is up, not after the stalled call's timeout and
then its own batch's.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Awaitable, Callable, Generic, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Item = TypeVar("Item")

ROWS_BOUNDARIES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
WAIT_BOUNDARIES_MS = [0.1, 0.5, 1, 2, 5, 10, 20, 50, 100]


class BatchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(
        ge=1, le=65536,
        description="Most rows in one backend call (entity rows of a feature lookup, input rows of a model).",
    )
    max_wait_ms: float = Field(
        2.0, ge=0, le=1000,
        description="How long requests that arrived while the node was busy may wait for more; "
        "a request that finds the node idle is sent at once.",
    )


class Failed:
    """A result that is an error of its own request only."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


BatchCall = Callable[[list[Item]], Awaitable[list[Any]]]


class Batcher(Generic[Item]):
    """`await batcher(item)`: the item's result, from a call that may carry
    other requests' items too. `rows(item)` is the item's share of
    `max_batch_size`; an item larger than that on its own goes alone."""

    def __init__(self, name: str, config: BatchConfig, call: BatchCall, rows: Callable[[Item], int] = lambda _: 1,
                 timeout_s: Optional[float] = None, on_timeout: Callable[[], BaseException] = TimeoutError):
        self.name = name
        self.config = config
        self._call = call
        self._rows = rows
        self._timeout_s = timeout_s
        self._on_timeout = on_timeout
        self._in_flight = 0
        self._waiting: deque[tuple[Item, asyncio.Future, float]] = deque()
        self._waiting_rows = 0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._metrics = _BatchMetrics(name)

    async def __call__(self, item: Item) -> Any:
        rows = self._rows(item)
        if (self._in_flight == 0 and not self._waiting) or rows > self.config.max_batch_size:
            (result,) = await self._send([item], waited_ms=0.0)
        else:
            result = await self._wait_in_batch(item, rows)
        if isinstance(result, Failed):
            raise result.error
        return result

    async def _wait_in_batch(self, item: Item, rows: int) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((item, future, time.perf_counter()))
        self._waiting_rows += rows
        if self._waiting_rows >= self.config.max_batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.config.max_wait_ms / 1000.0, self._flush)
        # A caller that gives up (its timeout, a client gone) leaves its item
        # in the batch: the others' call goes on, its result is dropped.
        if self._timeout_s is None:
            return await future
        try:
            return await asyncio.wait_for(future, self._timeout_s)
        except asyncio.TimeoutError:
            raise self._on_timeout() from None

    def _flush(self) -> None:
        """Send what waits, in calls of at most max_batch_size rows."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            batch, rows = [], 0
            while self._waiting and (not batch or rows + self._rows(self._waiting[0][0]) <= self.config.max_batch_size):
                entry = self._waiting.popleft()
                rows += self._rows(entry[0])
                batch.append(entry)
            self._waiting_rows -= rows
            waited_ms = (time.perf_counter() - batch[0][2]) * 1000.0
            asyncio.get_running_loop().create_task(self._send_waiting(batch, waited_ms))

    async def _send_waiting(self, batch: list[tuple[Item, asyncio.Future, float]], waited_ms: float) -> None:
        try:
            results = await self._send([item for item, _, _ in batch], waited_ms)
        except BaseException as error:  # the call itself broke: every request in it fails with it
            results = [Failed(error)] * len(batch)
        for (_, future, _), result in zip(batch, results):
            if not future.done():
                future.set_result(result)

    async def _send(self, items: list[Item], waited_ms: float) -> list[Any]:
        self._in_flight += 1
        self._metrics.observe(sum(self._rows(item) for item in items), waited_ms)
        try:
            results = await self._call(items)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._waiting:
                self._flush()  # idle again: what gathered meanwhile goes now
        if len(results) != len(items):
            raise RuntimeError(f"a batch of {len(items)} gave {len(results)} results")
        return results


class _BatchMetrics:
    """Rows per backend call and how long its first request waited, per node,
    on Ray's Prometheus endpoint (no-ops outside Ray)."""

    def __init__(self, node: str):
        self.tags = {"node": node}
        self._rows = self._wait = None
        import ray

        if ray.is_initialized():
            from ray.serve import metrics

            self._rows = metrics.Histogram(
                "graph_node_batch_rows", description="Rows in one backend call of a batching graph node.",
                boundaries=ROWS_BOUNDARIES, tag_keys=("node",),
            )
            self._wait = metrics.Histogram(
                "graph_node_batch_wait_ms", description="How long a batch's first request waited for it, in milliseconds.",
                boundaries=WAIT_BOUNDARIES_MS, tag_keys=("node",),
            )

    def observe(self, rows: int, waited_ms: float) -> None:
        if self._rows is not None:
            self._rows.observe(rows, tags=self.tags)
            self._wait.observe(waited_ms, tags=self.tags)

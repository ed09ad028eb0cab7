"""The payload logger: a graph's requests to a sink, never in their way.

The request path only draws the sample and appends a record of references
(the request, the answer, node outputs) to a bounded queue; a daemon thread
wakes every WRITE_EVERY_S and encodes, redacts and writes what gathered, in
batches. (It does not wake per record: a thread woken on every request cost
the replica ~350 us of CPU per request in thread switches and GIL hand-offs,
measured at concurrency 32; docs/benchmarks.md.) When the queue is full the
record is dropped; when the sink fails (Redis down, disk full, a receiver
answering 500) the batch is dropped and the writer backs off, then tries
again: logging resumes by itself when the sink does. Both drops are counted
(`ray_graph_payload_log_records_total{outcome}`), as are the records
written. A request is never delayed or failed by its logging.
"""
from __future__ import annotations

import collections
import logging
import random
import threading
import time
import uuid
from collections import Counter
from typing import Any, Callable, Optional

from deployments.payloads.config import PayloadLogConfig
from deployments.payloads.events import EVENT_TYPE, encode, event, now, redact
from deployments.payloads.sinks import Sink, open_sink

logger = logging.getLogger("ray.serve.serve_graphs.payloads")

BATCH = 256  # records per write
WRITE_EVERY_S = 0.2  # the writer's wake-ups: records reach the sink within about this
BACKOFF_S = (0.2, 5.0)  # after a failed write: first wait, longest wait

WRITTEN, QUEUE_FULL, SINK_ERROR = "written", "dropped_queue_full", "dropped_sink_error"


class PayloadLogger:
    """`log(...)` from the request path; the rest happens in the writer thread.

    `request_id()` names the request being logged (under Serve: its
    X-Request-ID, from Serve's request context); `writer` names this
    process's file (one per replica)."""

    def __init__(self, graph: str, config: PayloadLogConfig, writer: Optional[str] = None,
                 request_id: Optional[Callable[[], str]] = None, draw: Callable[[], float] = random.random):
        self.graph = graph
        self.config = config
        self.request_id = request_id or (lambda: uuid.uuid4().hex)
        self.counts: Counter[str] = Counter()
        self.sink: Sink = open_sink(config.sink, graph, writer or f"process-{__import__('os').getpid()}")
        self._draw = draw
        self._queue: collections.deque = collections.deque()  # appends and pops are atomic: no lock, no wake-up
        self._busy = False  # a batch taken from the queue is being written
        self._metric = _records_metric()
        self._closing = threading.Event()
        self._last_failure_log = 0.0
        self._thread = threading.Thread(target=self._write_forever, name=f"payload-log-{graph}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ the request path

    def sampled(self) -> bool:
        return self.config.sample_ratio >= 1.0 or self._draw() < self.config.sample_ratio

    def log(self, data: dict[str, Any], type: str = EVENT_TYPE, part: Optional[str] = None) -> None:
        """Queue one request's record (`data`: references, encoded later);
        `type` and `part` for another kind of event of the same request (a
        shadow step's comparison)."""
        if len(self._queue) >= self.config.queue_size:
            self._count(QUEUE_FULL)
            return
        self._queue.append(event(self.graph, self.request_id(), data, now(), type, part))

    # ------------------------------------------------------------ the writer thread

    def _write_forever(self) -> None:
        backoff = BACKOFF_S[0]
        while True:
            if self._closing.wait(WRITE_EVERY_S) and not self._queue:
                return
            while self._queue:
                self._busy = True
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                try:
                    self.sink.write([(record, encode(record)) for record in map(self._redacted, batch)])
                except Exception as error:  # the sink's own failure: count, wait, go on
                    self._count(SINK_ERROR, len(batch))
                    self._warn(error, len(batch))
                    self._busy = False
                    if self._closing.wait(backoff):
                        return
                    backoff = min(backoff * 2, BACKOFF_S[1])
                    continue
                backoff = BACKOFF_S[0]
                self._count(WRITTEN, len(batch))
                self._busy = False

    def _redacted(self, record: dict[str, Any]) -> dict[str, Any]:
        if not self.config.redact or record["type"] != EVENT_TYPE:  # a comparison holds no request fields
            return record
        return {**record, "data": redact(record["data"], self.config.redact)}

    def _count(self, outcome: str, count: int = 1) -> None:
        self.counts[outcome] += count
        if self._metric is not None:
            self._metric.inc(count, tags={"graph": self.graph, "outcome": outcome})

    def _warn(self, error: Exception, count: int) -> None:
        """At most one warning every 10 s: a sink that is down is not a log flood."""
        if time.monotonic() - self._last_failure_log > 10:
            self._last_failure_log = time.monotonic()
            logger.warning("payload log of graph %s: %d records dropped, %s failed: %s: %s",
                           self.graph, count, self.sink.describe(), type(error).__name__, str(error)[:200])

    # ------------------------------------------------------------ tests, shutdown

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued record is written or dropped; False if that took too long."""
        deadline = time.monotonic() + timeout_s
        while self._queue or self._busy:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        self.flush(timeout_s)
        self._closing.set()
        self._thread.join(timeout_s)
        self.sink.close()


def _records_metric():
    try:
        import ray

        if not ray.is_initialized():
            return None
        from ray.serve import metrics

        return metrics.Counter(
            "graph_payload_log_records_total",
            description="Payload log records of a graph: written to its sink, or dropped (queue full, sink failing).",
            tag_keys=("graph", "outcome"),
        )
    except Exception:  # a metrics backend that cannot start: logging goes on uncounted in Prometheus
        return None

"""The ingress replica's side of drift detection: one row per logged
request for the drift monitor, sent in batches every `send_every_s`.

A request's features are a frame of N rows (one per candidate item) that
share the user's columns; N rows of one request are not N independent
draws, and a statistical test fed all of them would see drift in every
small window. So each request gives one row: the features of one of its
items, drawn at random, and the model's score of that item. That is the
unit the reference sample is made of (one training interaction per row).

Rows wait in a bounded list (beyond `MAX_WAITING`, dropped and counted):
a monitor that is down or slow costs the replica nothing but the rows.
`ray_graph_drift_rows_total{graph, outcome}` counts them, sent or dropped.
"""
from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Awaitable, Callable, Optional

from deployments.monitoring.config import DriftConfig
from deployments.nodes.feature_lookup import FeatureFrame

logger = logging.getLogger("ray.serve.serve_graphs.monitoring")

MAX_WAITING = 10_000
SCORE = "score"


def request_row(frame: Any, model_output: Any, draw: Callable[[int], int]) -> Optional[dict[str, float]]:
    """One row of a request: its item `draw(n)`'s features and score; None
    when the request has no feature frame or scores (a failed or skipped node)."""
    if not isinstance(frame, FeatureFrame) or not isinstance(model_output, dict):
        return None
    scores = model_output.get("scores")
    if not isinstance(scores, list) or not scores:
        return None
    index = draw(len(scores))
    row = {name: column[index] for name, column in frame.values.items() if index < len(column)}
    row[SCORE] = scores[index]
    return row


class DriftFeed:
    """`observe(state)` from the request path (a logged request's slots);
    a task on the replica's loop sends what gathered to `send(rows)`."""

    def __init__(self, config: DriftConfig, send: Callable[[list[dict[str, float]]], Awaitable[Any]],
                 draw: Callable[[int], int] = lambda n: random.randrange(n), graph: str = ""):
        self.config = config
        self.graph = graph
        self._metric = _rows_metric()
        self._counted = {"sent": 0, "dropped": 0}
        self._send = send
        self._draw = draw
        self.waiting: list[dict[str, float]] = []
        self.sent = self.dropped = 0
        self._task: Optional[asyncio.Task] = None

    def observe(self, state: dict[str, Any]) -> None:
        row = request_row(state.get(self.config.features_node), state.get(self.config.model_node), self._draw)
        if row is None:
            return
        if len(self.waiting) >= MAX_WAITING:
            self.dropped += 1
            return
        self.waiting.append(row)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._send_forever())

    async def flush(self) -> None:
        """Send what waits now (tests; the task does it every send_every_s)."""
        rows, self.waiting = self.waiting, []
        if rows:
            try:
                await self._send(rows)
                self.sent += len(rows)
            except Exception as error:  # the monitor down or restarting: these rows are lost, the next go
                self.dropped += len(rows)
                logger.warning("drift monitor unavailable, %d rows dropped: %s", len(rows), error)
        self._count()

    def _count(self) -> None:
        """What was sent and dropped since the last flush, into Ray's counter (once per flush, not per row)."""
        for outcome, total in (("sent", self.sent), ("dropped", self.dropped)):
            if self._metric is not None and total > self._counted[outcome]:
                self._metric.inc(total - self._counted[outcome], tags={"graph": self.graph, "outcome": outcome})
            self._counted[outcome] = total

    async def _send_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.send_every_s)
            await self.flush()


def _rows_metric():
    import ray

    if not ray.is_initialized():
        return None
    from ray.serve import metrics

    return metrics.Counter("graph_drift_rows_total", tag_keys=("graph", "outcome"),
                           description="Rows of a graph's traffic for its drift monitor: sent, or dropped (the monitor "
                           "down or slow, or more than MAX_WAITING waiting).")

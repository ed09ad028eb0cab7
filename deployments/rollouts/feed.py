"""The ingress replica's side of a rollout: the weights its splits route
by, and what it saw, sent to the controller every `tick_s`.

A replica starts with the weights the registry's record gives
(`initial_weights`: the same record every replica and the controller read,
so a restarted replica routes as the others), then takes each answer of the
controller. A controller that is away leaves the weights as they are and
loses the counts of that interval, never a request.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Optional

from deployments.rollouts.config import RolloutPlan
from deployments.rollouts.policy import LATENCY_SAMPLE, challenger_weight

logger = logging.getLogger("ray.serve.serve_graphs.rollouts")

Send = Callable[[dict[str, Any]], Awaitable[dict[str, list[float]]]]


def initial_weights(plans: dict[str, RolloutPlan], store_factory: Optional[Callable[[RolloutPlan], Any]] = None) -> dict[str, list[float]]:
    """Each split's weights as the registry's record says now (blocking I/O)."""
    from deployments.rollouts.store import RegistryStore

    weights = {}
    for split, plan in plans.items():
        champion, challenger, state = (store_factory or RegistryStore)(plan).current()
        weights[split] = plan.weights(challenger_weight(state, champion, challenger))
    return weights


class RolloutFeed:
    def __init__(self, plans: dict[str, RolloutPlan], weights: dict[str, list[float]], send: Send):
        self.plans = plans
        self._weights = weights
        self._send = send
        self._pending: dict[str, dict[str, list]] = {}
        self._agreement: dict[str, list] = {}
        self.failed_reports = 0
        self.controller = None  # the in-process controller (in_process_feed), else None: a Serve deployment's
        self._task: Optional[asyncio.Task] = None
        self.every_s = min(plan.config.tick_s for plan in plans.values())

    def weights(self, split: str) -> list[float]:
        self._ensure_task()
        return self._weights[split]

    def record(self, split: str, variant: str, ok: bool, latency_ms: float) -> None:
        counts = self._pending.setdefault(split, {}).setdefault(variant, [0, 0, []])
        counts[0] += 1
        counts[1] += 0 if ok else 1
        if len(counts[2]) < LATENCY_SAMPLE:
            counts[2].append(round(latency_ms, 3))

    def agreement(self, shadow: str, value: Optional[float]) -> None:
        if value is not None:
            sums = self._agreement.setdefault(shadow, [0.0, 0])
            sums[0] += value
            sums[1] += 1

    def take(self) -> dict[str, Any]:
        """What gathered since the last report, as the controller takes it."""
        report = {"splits": self._pending, "agreement": self._agreement}
        self._pending, self._agreement = {}, {}
        return report

    async def sync(self) -> None:
        """Report, and route by the answer (tests; the task does it every tick)."""
        try:
            self._weights = {**self._weights, **await self._send(self.take())}
        except Exception as error:
            self.failed_reports += 1
            logger.warning("rollout controller unavailable (%s): weights unchanged %s", error, self._weights)

    def _ensure_task(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._forever())

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.sync()


def in_process_feed(plans: dict[str, RolloutPlan]) -> RolloutFeed:
    """A graph run in this process (apps.graph.in_process, a notebook): the
    controller's loop runs here too, on the caller's event loop, started by
    the first report (`feed.controller`: its status)."""
    from deployments.rollouts.controller import Rollouts

    controller = Rollouts(plans)

    async def send(counts: dict[str, Any]) -> dict[str, list[float]]:
        controller.start()
        return controller.report(counts)

    feed = RolloutFeed(plans, initial_weights(plans), send)
    feed.controller = controller
    return feed

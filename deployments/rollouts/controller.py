"""The live loop of a graph's rollouts, with no Serve in it: the app's
RolloutController deployment (serving.py) runs it for the replicas,
`in_process` graphs run it on their own loop.

Every `tick_s` each rollout reads the aliases and its record from the
registry, starts a rollout when the challenger alias names a version with
none, and otherwise judges the step's window (policy.py): it holds, steps
up, promotes (moves the champion alias) or rolls back, and records the
decision in the registry before anyone routes by it. The replicas' reports
add to the window; the answer to each report is the weights to route by.

With the registry away, the rollout holds its step (a step up or a
promotion needs the registry), but a breach still rolls back at once: the
challenger's weight drops to 0 here, and the decision is written to the
registry as soon as it answers again.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Optional

from deployments.rollouts.config import RolloutPlan
from deployments.rollouts.policy import (RolloutState, StepWindow, VariantWindow, Verdict, challenger_weight, judge,
                                         needs_start, started)
from deployments.rollouts.store import RegistryStore

logger = logging.getLogger("ray.serve.serve_graphs.rollouts")

# (plan, decision, reason, state): what the Serve deployment turns into metrics
OnDecision = Callable[[RolloutPlan, str, str, RolloutState], None]


class Rollout:
    """One split's rollout."""

    def __init__(self, plan: RolloutPlan, store: Any = None, clock: Callable[[], float] = time.time):
        self.plan = plan
        self.store = store if store is not None else RegistryStore(plan)
        self.clock = clock
        self.versions: Optional[tuple[str, str]] = None
        self.state: Optional[RolloutState] = None
        self.window = StepWindow()
        self.baseline: Optional[VariantWindow] = None  # the champion's last window with min_requests
        self.weight: Optional[float] = None  # until the first tick has read the registry
        self.last: Optional[Verdict] = None
        self.problem = ""
        self.unsaved: Optional[RolloutState] = None  # a rollback decided while the registry was away

    def weights(self) -> Optional[list[float]]:
        return None if self.weight is None else self.plan.weights(self.weight)

    def add(self, variants: dict[str, list], agreement: dict[str, list]) -> None:
        """One replica's counts since its last report: variant -> [requests, errors, latencies]."""
        for name, (requests, errors, latencies) in variants.items():
            side = self.window.challenger if name == self.plan.challenger else self.window.champion
            side.add(requests, errors, latencies)
        for shadow, (total, count) in agreement.items():
            self.window.add_agreement(shadow, total, count)

    async def tick(self, drifted: Optional[bool] = None, on_decision: Optional[OnDecision] = None) -> None:
        try:
            champion, challenger, state = await asyncio.to_thread(self.store.current)
        except Exception as error:  # the registry away: hold, unless the challenger breaches a guard
            self._registry_away(error)
            self._judge_offline(drifted, on_decision)
            return
        self.problem = ""
        now = self.clock()
        if self.unsaved is not None:
            state = await self._save_rollback(state)
        if (champion, challenger) != self.versions:
            self.versions, self.window, self.baseline = (champion, challenger), StepWindow(), None
        decided: list[tuple[str, str]] = []
        if needs_start(state, champion, challenger):
            state = started(champion, challenger, self.plan.config, now)
            await asyncio.to_thread(self.store.save, state)
            self.window = StepWindow()
            decided.append(("started", f"{self.plan.model} v{challenger} against v{champion}"))
        if state is not None and state.status == "running" and \
                (state.champion_version, state.challenger_version) == (champion, challenger):
            verdict = judge(self.plan.config, state.step, now - state.step_started_at, self.window, self.baseline, drifted)
            self.last = verdict
            if verdict.decision != "hold":
                decided.append(await self._act(state, verdict, now))
                if state.status == "promoted":  # the champion alias names the challenger's version now
                    champion = challenger
                    self.versions, self.window = (champion, challenger), StepWindow()
        self.state = state
        self.weight = challenger_weight(state, champion, challenger)
        for decision, reason in decided:
            log = logger.warning if decision == "rolled_back" else logger.info
            log("rollout %s: %s (%s); challenger weight %.2f", self.plan.key, decision, reason, self.weight)
            if on_decision is not None:
                on_decision(self.plan, decision, reason, state)

    async def _act(self, state: RolloutState, verdict: Verdict, now: float) -> tuple[str, str]:
        config = self.plan.config
        if verdict.decision == "rollback":
            self._roll_back(state, verdict, now)
            try:
                await asyncio.to_thread(self.store.save, state)
                self.unsaved = None
            except Exception as error:  # routed by at once all the same; saved when the registry answers
                self._registry_away(error)
            return "rolled_back", verdict.reason
        if self.window.champion.requests >= config.min_requests:
            self.baseline = self.window.champion
        self.window = StepWindow()
        if verdict.decision == "advance":
            state.step += 1
            state.weight, state.step_started_at = config.steps[state.step], now
            state.event(now, "advanced")
            await asyncio.to_thread(self.store.save, state)
            return "advanced", f"step {state.step + 1}/{len(config.steps)}: {state.weight:.0%}"
        # The alias first: a failure between the two leaves the record
        # "running" and the champion already moved, which routes the same.
        await asyncio.to_thread(self.store.point_champion, state.challenger_version)
        state.status, state.weight, state.reason = "promoted", 1.0, verdict.reason
        state.event(now, "promoted")
        await asyncio.to_thread(self.store.save, state)
        return "promoted", f"{self.plan.champion_alias} -> v{state.challenger_version}"

    def _roll_back(self, state: RolloutState, verdict: Verdict, now: float) -> None:
        state.status, state.weight, state.reason = "rolled_back", 0.0, verdict.reason
        state.event(now, "rolled_back", verdict.reason)
        self.unsaved = state

    def _registry_away(self, error: Exception) -> None:
        self.problem = f"registry: {type(error).__name__}: {error}"[:300]
        logger.warning("rollout %s: %s; holding (a breach still rolls back)", self.plan.key, self.problem)

    def _judge_offline(self, drifted: Optional[bool], on_decision: Optional[OnDecision]) -> None:
        """The registry away: the running step's window judged as ever; only a rollback is acted on."""
        state = self.state
        if state is None or state.status != "running":
            return
        now = self.clock()
        verdict = judge(self.plan.config, state.step, now - state.step_started_at, self.window, self.baseline, drifted)
        self.last = verdict
        if verdict.decision != "rollback":
            return
        self._roll_back(state, verdict, now)
        self.weight = 0.0
        logger.warning("rollout %s: rolled_back (%s) with the registry away; recorded once it answers",
                       self.plan.key, verdict.reason)
        if on_decision is not None:
            on_decision(self.plan, "rolled_back", verdict.reason, state)

    async def _save_rollback(self, state: Optional[RolloutState]) -> Optional[RolloutState]:
        """The rollback decided while the registry was away, written now if
        the record is still the running one of the same versions."""
        pending = self.unsaved
        assert pending is not None
        same = state is not None and state.status == "running" and \
            (state.champion_version, state.challenger_version) == (pending.champion_version, pending.challenger_version)
        if same:
            await asyncio.to_thread(self.store.save, pending)
        self.unsaved = None
        return pending if same else state

    def status(self) -> dict[str, Any]:
        state = self.state
        return {
            "split": self.plan.split, "model": self.plan.model, "versions": self.versions, "weights": self.weights(),
            "state": None if state is None else {"status": state.status, "step": state.step, "weight": state.weight,
                                                   "reason": state.reason, "history": state.history},
            "window": {"champion": self.window.champion.requests, "challenger": self.window.challenger.requests},
            "guards": [vars(r) for r in self.last.readings] if self.last is not None else [],
            "problem": self.problem,
        }


class Rollouts:
    """The rollouts of one graph: reports in, weights out, a tick every `tick_s`."""

    def __init__(self, plans: dict[str, RolloutPlan], drift: Optional[Callable[[], Awaitable[Optional[bool]]]] = None,
                 on_decision: Optional[OnDecision] = None, store_factory: Callable[[RolloutPlan], Any] = RegistryStore,
                 clock: Callable[[], float] = time.time, after_tick: Optional[Callable[[], None]] = None):
        self.rollouts = {split: Rollout(plan, store_factory(plan), clock) for split, plan in plans.items()}
        self._drift = drift if any(g.metric == "drift" for p in plans.values() for g in p.config.guards) else None
        self.on_decision = on_decision
        self.after_tick = after_tick  # the Serve controller's gauges, set again every tick
        self.tick_s = min(plan.config.tick_s for plan in plans.values())
        self._task: Optional[asyncio.Task] = None

    def weights(self) -> dict[str, list[float]]:
        """The splits' weights, of the rollouts that have read the registry once."""
        return {split: rollout.weights() for split, rollout in self.rollouts.items() if rollout.weight is not None}

    def report(self, report: dict[str, Any]) -> dict[str, list[float]]:
        """A replica's counts (RolloutFeed.take); the weights it routes by next."""
        splits, agreement = report.get("splits", {}), report.get("agreement", {})
        for split, rollout in self.rollouts.items():
            rollout.add(splits.get(split, {}), agreement)
        return self.weights()

    async def tick(self) -> None:
        drifted = None
        if self._drift is not None:
            try:
                drifted = await self._drift()
            except Exception as error:  # the monitor away: the drift guard has no verdict
                logger.warning("rollouts: drift monitor unavailable: %s", error)
        for rollout in self.rollouts.values():
            await rollout.tick(drifted, self.on_decision)

    def start(self) -> None:
        """The tick loop, on the running loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._forever())

    @property
    def alive(self) -> bool:
        return self._task is None or not self._task.done()

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.tick()
                if self.after_tick is not None:
                    self.after_tick()
            except Exception:  # never the end of the loop: logged, the next tick tries again
                logger.exception("rollouts: tick failed")

    def status(self) -> dict[str, Any]:
        return {split: rollout.status() for split, rollout in self.rollouts.items()}

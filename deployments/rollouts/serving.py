"""The rollout controller of a graph app: one Serve deployment (one replica,
no CPU reserved) that the ingress replicas report to every `tick_s` and
take their splits' weights from (deployments/rollouts/controller.py). It
exports what it decides:

    ray_graph_rollout_weight{graph, split, variant}       each variant's share now
    ray_graph_rollout_step{graph, split}                  the step (1-based; 0 before a start)
    ray_graph_rollout_state{graph, split, state}          1 for the state now: idle, running, promoted, rolled_back
    ray_graph_rollout_decisions_total{graph, split, decision}
        started, advanced, promoted, rolled_back

The gauges are set again every tick (Ray drops a gauge's series ~20 s after
its last set). A restarted controller reads the record from the registry before it
answers anyone, so it routes as its predecessor did.
"""
from __future__ import annotations

from typing import Any, Optional

from ray import serve

from deployments.rollouts.config import RolloutPlan
from deployments.rollouts.controller import Rollouts
from deployments.rollouts.policy import RolloutState

STATES = ("idle", "running", "promoted", "rolled_back")


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0},
                  health_check_period_s=10, health_check_timeout_s=30)
class RolloutController:
    async def __init__(self, graph: str, plans: dict[str, RolloutPlan], monitor: Any = None):
        self.graph = graph
        self._metrics = _Metrics(graph)
        drift = None
        if monitor is not None:
            async def drift() -> Optional[bool]:
                verdict = (await monitor.status.remote())["verdict"]
                return None if verdict is None else bool(verdict["drifted"])
        self.rollouts = Rollouts(plans, drift=drift, on_decision=self._decided,
                                 after_tick=lambda: self._metrics.weights(self.rollouts))
        await self.rollouts.tick()
        self._metrics.weights(self.rollouts)
        self.rollouts.start()

    def _decided(self, plan: RolloutPlan, decision: str, reason: str, state: RolloutState) -> None:
        self._metrics.decision(plan, decision)
        self._metrics.weights(self.rollouts)

    async def report(self, report: dict[str, Any]) -> dict[str, list[float]]:
        weights = self.rollouts.report(report)
        self._metrics.weights(self.rollouts)
        return weights

    async def status(self) -> dict[str, Any]:
        """Each rollout's versions, weights, record and latest guard readings (tests, the CLI)."""
        return self.rollouts.status()

    async def tick(self) -> dict[str, Any]:
        """Judge now (tests); the loop does it every tick_s."""
        await self.rollouts.tick()
        return self.rollouts.status()

    def check_health(self) -> None:
        if not self.rollouts.alive:
            raise RuntimeError("the rollout loop stopped")


class _Metrics:
    """Decisions and weights on Ray's Prometheus endpoint (no-ops outside Ray)."""

    def __init__(self, graph: str):
        import ray

        self.graph = graph
        self.enabled = ray.is_initialized()
        if not self.enabled:
            return
        from ray.serve import metrics

        self.weight = metrics.Gauge("graph_rollout_weight", tag_keys=("graph", "split", "variant"),
                                    description="Each variant's share of a rolled-out split's traffic now.")
        self.step = metrics.Gauge("graph_rollout_step", tag_keys=("graph", "split"),
                                  description="The rollout's step (1-based; 0 before it starts).")
        self.state = metrics.Gauge("graph_rollout_state", tag_keys=("graph", "split", "state"),
                                   description="1 for the rollout's state now (idle, running, promoted, rolled_back), "
                                   "0 for the others: what an alert watches (a counter's first increment is not an "
                                   "increase to Prometheus).")
        self.decisions = metrics.Counter("graph_rollout_decisions_total", tag_keys=("graph", "split", "decision"),
                                         description="Rollout decisions: started, advanced, promoted, rolled_back "
                                         "(the reason is in the registry's record and the controller's log).")

    def weights(self, rollouts: Rollouts) -> None:
        if not self.enabled:
            return
        for split, rollout in rollouts.rollouts.items():
            weights = rollout.weights()
            if weights is None:
                continue
            for variant, weight in zip(rollout.plan.variants, weights):
                self.weight.set(weight, tags={"graph": self.graph, "split": split, "variant": variant})
            step = 0 if rollout.state is None else rollout.state.step + 1
            self.step.set(step, tags={"graph": self.graph, "split": split})
            now = "idle" if rollout.state is None or rollout.versions is None or \
                rollout.state.challenger_version != rollout.versions[1] else rollout.state.status
            for state in STATES:
                self.state.set(1 if state == now else 0, tags={"graph": self.graph, "split": split, "state": state})

    def decision(self, plan: RolloutPlan, decision: str) -> None:
        if self.enabled:
            self.decisions.inc(tags={"graph": self.graph, "split": plan.split, "decision": decision})

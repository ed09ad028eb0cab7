"""The `rollout:` of a split step, typed and checked where the config is read.

    kind: split
    name: ab
    sticky_key: request.user_id
    variants:                      # no weights: the rollout sets them
      - {name: champion, then: {kind: node, node: champion}}      # ranker@champion
      - {name: challenger, then: {kind: node, node: challenger}}  # ranker@challenger
    rollout:
      challenger: challenger       # the variant rolled out; the other one is the champion
      steps: [0.05, 0.25, 0.5, 1.0]
      dwell_s: 60
      min_requests: 50
      guards:
        - {metric: error_rate, max_increase: 0.01}
        - {metric: latency_p99, max_ratio: 1.5, slack_ms: 5}
        - {metric: shadow_agreement, shadow: ranker, min: 0.6}
        - {metric: drift}

The registered model and its two aliases come from the first model node of
each variant (deployments/graph/validate.py checks that there is one, that
both name the same model in the same registry, and that the aliases differ):
what the rollout moves at the end is the alias the champion variant serves.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorRateGuard(_Strict):
    """The challenger's share of failed requests against the champion's."""

    metric: Literal["error_rate"]
    max_increase: float = Field(0.01, ge=0, le=1, description="How far the challenger's error rate may exceed the "
                                "champion's (absolute: 0.01 is one point).")


class LatencyGuard(_Strict):
    """The challenger's p99 latency (of its variant's steps) against the champion's."""

    metric: Literal["latency_p99"]
    max_ratio: float = Field(1.5, ge=1, le=100, description="Breached past champion p99 x max_ratio + slack_ms.")
    slack_ms: float = Field(5.0, ge=0, le=60_000, description="Added to the bound: at a few milliseconds, noise alone "
                            "moves a p99 by more than any ratio.")


class ShadowAgreementGuard(_Strict):
    """The mean top-k agreement of a shadow step of the graph (its candidate against its primary)."""

    metric: Literal["shadow_agreement"]
    shadow: str = Field(min_length=1, description="A shadow step of the graph, by name.")
    min: float = Field(0.5, ge=0, le=1, description="Breached when the step's mean agreement falls below it.")


class DriftGuard(_Strict):
    """The app's drift flag (its `drift:` monitor): breached while the traffic drifts."""

    metric: Literal["drift"]


Guard = Annotated[Union[ErrorRateGuard, LatencyGuard, ShadowAgreementGuard, DriftGuard], Field(discriminator="metric")]


class RolloutConfig(_Strict):
    challenger: str = Field(min_length=1, description="The variant rolled out; the split's other variant is the champion.")
    steps: list[float] = Field(min_length=1, max_length=20, description="The challenger's share of traffic, step by step, "
                               "rising, the last 1.0 (or less: the alias moves after the last step all the same).")
    dwell_s: float = Field(60.0, gt=0, le=7 * 86400, description="Time per step with every guard holding before the next.")
    min_requests: int = Field(100, ge=1, le=1_000_000, description="Challenger requests (and champion ones, for the "
                              "comparisons) a step needs before its guards judge it; a p99 of fewer than 100 is the "
                              "slowest request's latency.")
    guards: list[Guard] = Field(
        default_factory=lambda: [ErrorRateGuard(metric="error_rate"), LatencyGuard(metric="latency_p99")],
        description="Each compared every tick; one breach rolls the challenger back to 0 at once.")
    tick_s: float = Field(1.0, ge=0.1, le=60, description="How often replicas report and the guards are judged.")

    @field_validator("steps")
    @classmethod
    def _rising(cls, steps: list[float]) -> list[float]:
        for index, weight in enumerate(steps):
            if not 0 < weight <= 1:
                raise ValueError(f"steps[{index}] = {weight:g}: each step is a share of traffic in (0, 1]")
            if index and weight <= steps[index - 1]:
                raise ValueError(f"steps[{index}] = {weight:g} does not rise above steps[{index - 1}] = {steps[index - 1]:g}")
        return steps


class RolloutPlan(_Strict):
    """One split's rollout, resolved against its graph: what the controller
    and the replicas act on (deployments/graph/validate.py builds it)."""

    graph: str
    split: str
    champion: str = Field(description="The champion variant's name.")
    challenger: str = Field(description="The challenger variant's name.")
    variants: list[str] = Field(description="The split's variant names in order (the weights' order).")
    model: str
    registry_uri: str
    champion_alias: str
    challenger_alias: str
    config: RolloutConfig

    def weights(self, challenger_weight: float) -> list[float]:
        """The split's weights, in variant order, for a challenger share."""
        return [challenger_weight if name == self.challenger else 1.0 - challenger_weight for name in self.variants]

    @property
    def key(self) -> str:
        """The registry tag holding the state (on the challenger's version)."""
        return f"rollout.{self.graph}.{self.split}"

"""What a rollout decides, as plain functions of what it saw (no I/O): the
tests drive them with made-up windows, the controller with the replicas'.

A step's window holds, per variant, the requests, the failed ones and a
bounded sample of latencies, and the agreement of each shadow step. Every
tick the guards judge the window:
- a guard that is breached rolls the challenger back to 0 at once;
- a guard without enough data yet (fewer than `min_requests`) waits;
- once the step has lasted `dwell_s` with every guard holding, the next
  step starts; after the last, the champion alias moves to the challenger.

The champion's side of a comparison is the current step's when it has
`min_requests`, else the last step's that had (a 100 % step sends the
champion nothing), else none: the error rate is then compared with 0, the
latency not at all.
"""
from __future__ import annotations

import collections
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

from deployments.rollouts.config import RolloutConfig

LATENCY_SAMPLE = 5000  # latencies kept per variant and step (the latest)
HISTORY = 20  # events kept in the registry record

Status = Literal["running", "promoted", "rolled_back"]
Decision = Literal["hold", "advance", "promote", "rollback"]


@dataclass
class VariantWindow:
    requests: int = 0
    errors: int = 0
    latencies_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LATENCY_SAMPLE))

    def add(self, requests: int, errors: int, latencies_ms: list[float]) -> None:
        self.requests += requests
        self.errors += errors
        self.latencies_ms.extend(latencies_ms)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p99(self) -> Optional[float]:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


@dataclass
class StepWindow:
    """What one step has seen so far: per variant role, and per shadow step [sum, count]."""

    champion: VariantWindow = field(default_factory=VariantWindow)
    challenger: VariantWindow = field(default_factory=VariantWindow)
    agreement: dict[str, list[float]] = field(default_factory=dict)

    def add_agreement(self, shadow: str, total: float, count: int) -> None:
        sums = self.agreement.setdefault(shadow, [0.0, 0])
        sums[0] += total
        sums[1] += count


@dataclass
class GuardReading:
    guard: str
    ok: Optional[bool]  # None: not enough data yet
    detail: str


@dataclass
class Verdict:
    decision: Decision
    reason: str
    readings: list[GuardReading]


def read_guards(config: RolloutConfig, window: StepWindow, baseline: Optional[VariantWindow],
                drifted: Optional[bool]) -> list[GuardReading]:
    """Each guard's reading of the window (`baseline`: the champion's last full window)."""
    need = config.min_requests
    challenger = window.challenger
    champion = window.champion if window.champion.requests >= need else baseline
    readings = []
    for guard in config.guards:
        if guard.metric == "error_rate":
            if challenger.requests < need:
                readings.append(GuardReading("error_rate", None, f"{challenger.requests}/{need} challenger requests"))
                continue
            reference = champion.error_rate if champion is not None else 0.0
            bound = reference + guard.max_increase
            ok = challenger.error_rate <= bound
            readings.append(GuardReading("error_rate", ok, f"challenger {challenger.error_rate:.3f} "
                                         f"({challenger.errors}/{challenger.requests}) vs bound {bound:.3f} "
                                         f"(champion {reference:.3f} + {guard.max_increase:g})"))
        elif guard.metric == "latency_p99":
            if challenger.requests < need:
                readings.append(GuardReading("latency_p99", None, f"{challenger.requests}/{need} challenger requests"))
                continue
            mine = challenger.p99()
            if champion is None or champion.p99() is None or mine is None:
                readings.append(GuardReading("latency_p99", True, "no champion traffic to compare with"))
                continue
            bound = champion.p99() * guard.max_ratio + guard.slack_ms
            readings.append(GuardReading("latency_p99", mine <= bound, f"challenger p99 {mine:.1f} ms vs bound "
                                         f"{bound:.1f} ms (champion {champion.p99():.1f} ms x {guard.max_ratio:g} "
                                         f"+ {guard.slack_ms:g})"))
        elif guard.metric == "shadow_agreement":
            total, count = window.agreement.get(guard.shadow, (0.0, 0))
            if count < need:
                readings.append(GuardReading("shadow_agreement", None, f"{count}/{need} comparisons of {guard.shadow}"))
                continue
            mean = total / count
            readings.append(GuardReading("shadow_agreement", mean >= guard.min,
                                         f"{guard.shadow} mean top-k agreement {mean:.2f} vs min {guard.min:g}"))
        elif guard.metric == "drift":
            if drifted is None:
                readings.append(GuardReading("drift", True, "no drift verdict yet"))
            else:
                readings.append(GuardReading("drift", not drifted, "the traffic drifts" if drifted else "no drift"))
    return readings


def judge(config: RolloutConfig, step: int, in_step_s: float, window: StepWindow,
          baseline: Optional[VariantWindow] = None, drifted: Optional[bool] = None) -> Verdict:
    """What to do now in step `step` (index into config.steps), `in_step_s` into it."""
    readings = read_guards(config, window, baseline, drifted)
    breached = [r for r in readings if r.ok is False]
    if breached:
        return Verdict("rollback", "; ".join(f"{r.guard}: {r.detail}" for r in breached), readings)
    waiting = [r for r in readings if r.ok is None]
    if in_step_s < config.dwell_s:
        return Verdict("hold", f"{in_step_s:.0f}/{config.dwell_s:g} s of step {step + 1}", readings)
    if waiting or window.challenger.requests < config.min_requests:
        detail = "; ".join(f"{r.guard}: {r.detail}" for r in waiting) or \
            f"{window.challenger.requests}/{config.min_requests} challenger requests"
        return Verdict("hold", f"waiting for data: {detail}", readings)
    last = step + 1 >= len(config.steps)
    return Verdict("promote" if last else "advance", "every guard held for the step's dwell", readings)


@dataclass
class RolloutState:
    """The record of one rollout, kept in the registry as a tag of the
    challenger's version: it outlives every replica and the controller."""

    champion_version: str
    challenger_version: str
    status: Status
    step: int
    weight: float  # the challenger's share now
    started_at: float
    step_started_at: float
    reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)

    def event(self, at: float, what: str, reason: str = "") -> None:
        self.history.append({"at": round(at, 3), "event": what, "weight": self.weight, **({"reason": reason[:300]} if reason else {})})
        del self.history[:-HISTORY]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "RolloutState":
        return cls(**json.loads(text))


def started(champion_version: str, challenger_version: str, config: RolloutConfig, now: float) -> RolloutState:
    state = RolloutState(champion_version, challenger_version, "running", 0, config.steps[0], now, now)
    state.event(now, "started")
    return state


def challenger_weight(state: Optional[RolloutState], champion_version: str, challenger_version: str) -> float:
    """The challenger's share for the versions the aliases name now:
    - the same version: 1.0 if it got there by this rollout (the champion
      variant's nodes may follow the moved alias a poll later), else 0;
    - a rollout of exactly these two versions: its weight (0 once rolled back);
    - anything else: 0 until the controller starts the rollout."""
    if champion_version == challenger_version:
        promoted = state is not None and state.status == "promoted" and state.challenger_version == challenger_version
        return 1.0 if promoted else 0.0
    if state is not None and (state.champion_version, state.challenger_version) == (champion_version, challenger_version) \
            and state.status != "promoted":
        return state.weight
    return 0.0


def needs_start(state: Optional[RolloutState], champion_version: str, challenger_version: str) -> bool:
    """Whether these versions call for a new rollout: two different versions
    and no record of a rollout between them (a champion moved back after a
    promotion counts as new)."""
    if champion_version == challenger_version:
        return False
    return state is None or state.champion_version != champion_version or state.status == "promoted"

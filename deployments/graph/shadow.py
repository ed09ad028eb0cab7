"""What a shadow step records: each mirrored request's comparison with the
primary's answer, and counts (mirrored, compared, failed) per shadow step.

Kept in memory (the last `keep` comparisons) and, under Ray, counted in
`ray_graph_node_errors_total{node="<step>:shadow"}` through NodeMetrics.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ShadowRecord:
    step: str
    equal: bool
    primary_ms: float
    candidate_ms: float
    max_abs_diff: Optional[float] = None
    same_order: Optional[bool] = None


@dataclass
class ShadowCounts:
    mirrored: int = 0
    compared: int = 0
    failed: int = 0
    last_error: str = ""


@dataclass
class ShadowLog:
    keep: int = 1000
    counts: dict[str, ShadowCounts] = field(default_factory=lambda: collections.defaultdict(ShadowCounts))
    records: collections.deque = field(default_factory=collections.deque)

    def __post_init__(self):
        self.records = collections.deque(maxlen=self.keep)

    def started(self, step: str) -> None:
        self.counts[step].mirrored += 1

    def failed(self, step: str, reason: str) -> None:
        self.counts[step].failed += 1
        self.counts[step].last_error = reason

    def compared(self, record: ShadowRecord) -> None:
        self.counts[record.step].compared += 1
        self.records.append(record)


def compare(step: str, primary: Any, candidate: Any, primary_ms: float, candidate_ms: float) -> ShadowRecord:
    """Equality of the two results; for model outputs ({scores: [...]}) also the
    largest score difference and whether both rank the items the same way."""
    record = ShadowRecord(step, primary == candidate, round(primary_ms, 3), round(candidate_ms, 3))
    a, b = _scores(primary), _scores(candidate)
    if a is not None and b is not None and len(a) == len(b):
        record.max_abs_diff = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
        record.same_order = _order(a) == _order(b)
        record.equal = record.equal or (record.max_abs_diff == 0.0)
    return record


def _scores(value: Any) -> Optional[list[float]]:
    scores = value.get("scores") if isinstance(value, dict) else None
    if isinstance(scores, list) and all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
        return [float(s) for s in scores]
    return None


def _order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))

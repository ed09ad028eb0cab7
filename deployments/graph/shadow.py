"""What a shadow step records: each mirrored request's comparison with the
primary's answer, and counts per shadow step (mirrored, compared, failed,
dropped at the in-flight cap).

For model outputs (`{scores: [...]}`) a comparison holds the top-k
agreement (the share of the primary's k best items that the candidate also
ranks in its k best), the mean and largest absolute score difference,
Spearman's rank correlation (scipy) and both latencies. They go to:
- memory: the last `keep` comparisons and the counts (`executor.shadows`);
- Ray's Prometheus endpoint, under Ray: `ray_graph_shadow_requests_total
  {outcome}`, `ray_graph_shadow_topk_agreement`, `ray_graph_shadow_score_diff`,
  `ray_graph_shadow_rank_distance` (1 - the rank correlation: Ray's
  histograms take positive boundaries only) and
  `ray_graph_shadow_latency_ms{role}` (histograms: Ray rebuilds their sums
  from the buckets' midpoints, so use quantiles, or `_sum / _count` of the
  agreement, whose buckets sit on a top-5's values), per graph and step;
- the payload log, when the graph has one: an event per comparison with the
  request's id (deployments/payloads).
"""
from __future__ import annotations

import collections
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from deployments.metrics import LATENCY_BOUNDARIES_MS

# Ray exports a histogram's sum rebuilt from its buckets' midpoints: these
# put a midpoint on each value of a top-5 agreement (0.2, 0.4, ... 1.0), so
# `_sum / _count` is the mean agreement (within 0.05 for other k).
AGREEMENT_BOUNDARIES = [0.1, 0.3, 0.5, 0.7, 0.9, 1.1]
DIFF_BOUNDARIES = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
DISTANCE_BOUNDARIES = [0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 1.5]  # 1 - rho: Ray takes positive boundaries only


@dataclass
class ShadowRecord:
    step: str
    equal: bool
    primary_ms: float
    candidate_ms: float
    max_abs_diff: Optional[float] = None
    mean_abs_diff: Optional[float] = None
    same_order: Optional[bool] = None
    topk_agreement: Optional[float] = None
    rank_correlation: Optional[float] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ShadowCounts:
    mirrored: int = 0
    compared: int = 0
    failed: int = 0
    dropped: int = 0
    last_error: str = ""


class ShadowMetrics:
    """The comparisons on Ray's Prometheus endpoint (no-ops outside Ray)."""

    def __init__(self, graph: str):
        self.graph = graph
        self._requests = self._agreement = self._diff = self._distance = self._latency = None
        import ray

        if ray.is_initialized():
            from ray.serve import metrics

            tags = ("graph", "step")
            self._requests = metrics.Counter(
                "graph_shadow_requests_total", tag_keys=(*tags, "outcome"),
                description="Requests of a shadow step's candidate: mirrored, compared, failed, or dropped "
                "(the in-flight cap).")
            self._agreement = metrics.Histogram(
                "graph_shadow_topk_agreement", boundaries=AGREEMENT_BOUNDARIES, tag_keys=tags,
                description="Share of the primary's top-k items the candidate also ranks in its top k, per request.")
            self._diff = metrics.Histogram(
                "graph_shadow_score_diff", boundaries=DIFF_BOUNDARIES, tag_keys=tags,
                description="Mean absolute difference between the primary's and the candidate's scores, per request.")
            self._distance = metrics.Histogram(
                "graph_shadow_rank_distance", boundaries=DISTANCE_BOUNDARIES, tag_keys=tags,
                description="1 - Spearman's rank correlation of the primary's and the candidate's scores, per request "
                "(0: the same ranking, 1: unrelated, 2: reversed).")
            self._latency = metrics.Histogram(
                "graph_shadow_latency_ms", boundaries=LATENCY_BOUNDARIES_MS, tag_keys=(*tags, "role"),
                description="Latency of a shadow step's primary and candidate, in milliseconds.")

    def count(self, step: str, outcome: str) -> None:
        if self._requests is not None:
            self._requests.inc(tags={"graph": self.graph, "step": step, "outcome": outcome})

    def compared(self, record: ShadowRecord) -> None:
        if self._requests is None:
            return
        tags = {"graph": self.graph, "step": record.step}
        self._requests.inc(tags={**tags, "outcome": "compared"})
        self._latency.observe(record.primary_ms, tags={**tags, "role": "primary"})
        self._latency.observe(record.candidate_ms, tags={**tags, "role": "candidate"})
        distance = None if record.rank_correlation is None else 1.0 - record.rank_correlation
        for histogram, value in ((self._agreement, record.topk_agreement), (self._diff, record.mean_abs_diff),
                                 (self._distance, distance)):
            if value is not None:
                histogram.observe(value, tags=tags)


@dataclass
class ShadowLog:
    keep: int = 1000
    graph: str = ""
    counts: dict[str, ShadowCounts] = field(default_factory=lambda: collections.defaultdict(ShadowCounts))
    records: collections.deque = field(default_factory=collections.deque)
    in_flight: collections.Counter = field(default_factory=collections.Counter)

    def __post_init__(self):
        self.records = collections.deque(maxlen=self.keep)
        self.metrics = ShadowMetrics(self.graph)

    def may_start(self, step: str, max_in_flight: int) -> bool:
        """Whether one more mirror of `step` may start now; if so it is counted
        as mirrored and in flight (until `finished`), else as dropped."""
        if self.in_flight[step] >= max_in_flight:
            self.counts[step].dropped += 1
            self.metrics.count(step, "dropped")
            return False
        self.in_flight[step] += 1
        self.counts[step].mirrored += 1
        self.metrics.count(step, "mirrored")
        return True

    def finished(self, step: str) -> None:
        self.in_flight[step] -= 1

    def failed(self, step: str, reason: str) -> None:
        self.counts[step].failed += 1
        self.counts[step].last_error = reason
        self.metrics.count(step, "failed")

    def compared(self, record: ShadowRecord) -> None:
        self.counts[record.step].compared += 1
        self.records.append(record)
        self.metrics.compared(record)


def compare(step: str, primary: Any, candidate: Any, primary_ms: float, candidate_ms: float, top_k: int = 5) -> ShadowRecord:
    """Equality of the two results; for model outputs ({scores: [...]}) also the
    score differences, whether both rank the items the same way, their top-k
    agreement and rank correlation."""
    record = ShadowRecord(step, primary == candidate, round(primary_ms, 3), round(candidate_ms, 3))
    a, b = _scores(primary), _scores(candidate)
    if a is not None and b is not None and len(a) == len(b) and a:
        diffs = [abs(x - y) for x, y in zip(a, b)]
        record.max_abs_diff = max(diffs)
        record.mean_abs_diff = sum(diffs) / len(diffs)
        order_a, order_b = _order(a), _order(b)
        record.same_order = order_a == order_b
        k = min(top_k, len(a))
        record.topk_agreement = len(set(order_a[:k]) & set(order_b[:k])) / k
        record.rank_correlation = _spearman(a, b)
        record.equal = record.equal or (record.max_abs_diff == 0.0)
    return record


def _spearman(a: list[float], b: list[float]) -> Optional[float]:
    """Spearman's rho (scipy); None when undefined (fewer than two items, a constant side)."""
    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    from scipy.stats import spearmanr

    rho = float(spearmanr(a, b).statistic)
    return rho if math.isfinite(rho) else None


def _scores(value: Any) -> Optional[list[float]]:
    scores = value.get("scores") if isinstance(value, dict) else None
    if isinstance(scores, list) and all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
        return [float(s) for s in scores]
    return None


def _order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))

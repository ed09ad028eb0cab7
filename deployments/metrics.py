"""Per-node latency histograms and error counters through `ray.serve.metrics`.

They appear on Ray's Prometheus endpoint as `ray_graph_node_latency_ms_*` and
`ray_graph_node_errors_total`, next to Serve's own `ray_serve_*` families.
Outside Ray (a notebook prototype) recording is a no-op but timings are still
returned to the caller.
"""
from __future__ import annotations

import random
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from deployments.errors import GraphError

LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
SCORE_BOUNDARIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
# Ray 2.60's metrics agent drops a gauge's series once it has not been set
# for two export intervals (~20 s; ray/_private/telemetry/
# open_telemetry_metric_recorder.py): a gauge set once a minute (a drift
# check's verdict) is missing from most scrapes, and an alert with `for:`
# never fires. Gauges that change rarely are set again this often.
GAUGE_REFRESH_S = 5.0


class NodeMetrics:
    """Per node: latency, errors. Per split variant (A/B): requests by outcome
    and latency. Per model version: the distribution of the scores it gave,
    from a sample of the calls (`score_sample_ratio`): one observation per item
    of every call cost more than the rest of the graph's metrics together
    (20 a request in the recommend graph: ~14 % of the ingress replica's CPU
    and ~330 us per request in Ray's metrics agent, docs/benchmarks.md), and
    quantiles need a sample, not all. Together they compare a challenger with
    the champion."""

    def __init__(self, graph: str, score_sample_ratio: float = 1.0, draw: Callable[[], float] = random.random):
        self.graph = graph
        self.score_sample_ratio = score_sample_ratio
        self._draw = draw
        self._latency = None
        self._errors = None
        self._variant_latency = None
        self._variant_requests = None
        self._scores = None
        self._readiness_checks = None
        try:
            import ray

            if ray.is_initialized():
                from ray.serve import metrics

                self._latency = metrics.Histogram(
                    "graph_node_latency_ms",
                    description="Latency of one node of an inference graph, in milliseconds.",
                    boundaries=LATENCY_BOUNDARIES_MS,
                    tag_keys=("graph", "node"),
                )
                self._errors = metrics.Counter(
                    "graph_node_errors_total",
                    description="Failed node calls of an inference graph, by error code.",
                    tag_keys=("graph", "node", "error"),
                )
                self._variant_latency = metrics.Histogram(
                    "graph_variant_latency_ms",
                    description="Latency of one variant of a split (A/B), in milliseconds.",
                    boundaries=LATENCY_BOUNDARIES_MS,
                    tag_keys=("graph", "split", "variant"),
                )
                self._variant_requests = metrics.Counter(
                    "graph_variant_requests_total",
                    description="Requests routed to one variant of a split, by outcome (ok or the error code).",
                    tag_keys=("graph", "split", "variant", "outcome"),
                )
                self._readiness_checks = metrics.Counter(
                    "graph_node_readiness_checks_total",
                    description="Readiness checks of a node's backend (one call to it each); the replica runs them "
                    "in the background, so probes of /readyz do not add to them.",
                    tag_keys=("graph", "node"),
                )
                self._scores = metrics.Histogram(
                    "graph_model_scores",
                    description="Scores a model node returned, per model version (one observation per item, "
                    "of a sampled share of the calls: the graph's score_sample_ratio).",
                    boundaries=SCORE_BOUNDARIES,
                    tag_keys=("graph", "node", "model", "version"),
                )
        except ImportError:  # pragma: no cover - Ray is a dependency
            pass

    def count_readiness_check(self, node: str) -> None:
        if self._readiness_checks is not None:
            self._readiness_checks.inc(tags={"graph": self.graph, "node": node})

    def count_error(self, node: str, code: str) -> None:
        """Count a failure that the graph absorbed (a soft dependency's)."""
        if self._errors is not None:
            self._errors.inc(tags={"graph": self.graph, "node": node, "error": code})

    @contextmanager
    def measure(self, node: str, timings: dict[str, float]) -> Iterator[None]:
        """Time a node call into `timings[node]` (ms); count its failure by code."""
        started = time.perf_counter()
        try:
            yield
        except Exception as error:
            code = error.code if isinstance(error, GraphError) else "internal_error"
            if self._errors is not None:
                self._errors.inc(tags={"graph": self.graph, "node": node, "error": code})
            raise
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            timings[node] = round(elapsed_ms, 3)
            if self._latency is not None:
                self._latency.observe(elapsed_ms, tags={"graph": self.graph, "node": node})

    @contextmanager
    def variant(self, split: str, variant: str) -> Iterator[None]:
        """Count and time one request on a split's chosen variant."""
        started, outcome = time.perf_counter(), "ok"
        try:
            yield
        except Exception as error:
            outcome = error.code if isinstance(error, GraphError) else "internal_error"
            raise
        finally:
            tags = {"graph": self.graph, "split": split, "variant": variant}
            if self._variant_latency is not None:
                self._variant_latency.observe((time.perf_counter() - started) * 1000.0, tags=tags)
                self._variant_requests.inc(tags={**tags, "outcome": outcome})

    def observe_scores(self, node: str, model: dict, scores: list[float]) -> None:
        """The scores of a sampled `score_sample_ratio` of the calls, one
        observation per item (the distribution, not the count, is the signal)."""
        if self._scores is not None and self._draw() < self.score_sample_ratio:
            tags = {"graph": self.graph, "node": node, "model": str(model.get("name")), "version": str(model.get("version"))}
            for score in scores:
                self._scores.observe(float(score), tags=tags)

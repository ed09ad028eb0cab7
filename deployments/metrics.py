"""Per-node latency histograms and error counters through `ray.serve.metrics`.

They appear on Ray's Prometheus endpoint as `ray_graph_node_latency_ms_*` and
`ray_graph_node_errors_total`, next to Serve's own `ray_serve_*` families.
Outside Ray (a notebook prototype) recording is a no-op but timings are still
returned to the caller.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from deployments.errors import GraphError

LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


class NodeMetrics:
    def __init__(self, graph: str):
        self.graph = graph
        self._latency = None
        self._errors = None
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
        except ImportError:  # pragma: no cover - Ray is a dependency
            pass

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

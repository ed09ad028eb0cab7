"""vLLM's engine metrics as Ray metrics, at the cost vLLM's own server pays.

vLLM records its engine metrics on every engine step: gauges and counters
per step, a histogram observation per generated token (inter-token latency)
and several per finished request. ray.serve.llm's `log_engine_metrics`
records each of them through Ray's metric API (vLLM's
RayPrometheusStatLogger), and Ray's metrics agent then replays every
histogram observation one call at a time (ray-project/ray#64852): under
load that replay costs the agent CPU in bursts at every export, and the
time to first token grows with it (docs/benchmarks.md, LLM benchmark).

Here vLLM records into its own Prometheus metrics, exactly as vLLM's OpenAI
server does, and `copy_to_ray` copies the `vllm:*` samples into Ray gauges
every 2 s: a few hundred gauge values per copy, whatever the load.
The series are the ones ray.serve.llm exports (`ray_vllm_*`, the same
labels), and the histograms are exact (Ray's replay puts every observation
at its bucket's midpoint): `_bucket` (with `le`), `_sum` and `_count`
series, cumulative, so `rate()` and `histogram_quantile()` work unchanged.
Their Prometheus type is gauge: a dashboard query does not see it.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray.llm._internal.serve.core.server.llm_server import LLMServer

logger = logging.getLogger(__name__)

COPY_INTERVAL_S = 2.0  # a copy is cheap; Ray's workers export every 10 s by default
PREFIX = "vllm:"


class PrometheusToRay:
    """Copies the `vllm:*` families of a prometheus_client registry into Ray
    gauges: one gauge per sample name (`vllm:x_bucket` -> `vllm_x_bucket`,
    exported by Ray as `ray_vllm_x_bucket`)."""

    def __init__(self, registry=None, gauge_cls=None):
        if gauge_cls is None:
            from ray.util.metrics import Gauge as gauge_cls
        if registry is None:
            from vllm.v1.metrics.prometheus import get_prometheus_registry

            registry = get_prometheus_registry()
        self._registry = registry
        self._gauge_cls = gauge_cls
        self._gauges: dict[str, object] = {}

    def copy_to_ray(self) -> int:
        """One copy of every `vllm:*` sample; returns how many were set."""
        copied = 0
        for family in self._registry.collect():
            if not family.name.startswith(PREFIX):
                continue
            for sample in family.samples:
                if sample.name.endswith("_created"):  # prometheus_client's creation timestamps
                    continue
                self._gauge(sample.name, family.documentation, sample.labels).set(sample.value, tags=sample.labels)
                copied += 1
        return copied

    def _gauge(self, sample_name: str, documentation: str, labels: dict[str, str]):
        gauge = self._gauges.get(sample_name)
        if gauge is None:
            gauge = self._gauge_cls(sample_name.replace(":", "_"), description=documentation, tag_keys=tuple(sorted(labels)))
            self._gauges[sample_name] = gauge
        return gauge

    async def copy_forever(self, interval_s: float = COPY_INTERVAL_S) -> None:
        """Runs on the replica's event loop until cancelled; a failed copy is
        logged once and retried (the engine's serving does not depend on it)."""
        failing = False
        while True:
            try:
                self.copy_to_ray()
                failing = False
            except Exception:  # noqa: BLE001 - metrics must never stop the replica
                if not failing:
                    logger.exception("copying vLLM's engine metrics to Ray failed; retrying every %.0f s", interval_s)
                failing = True
            await asyncio.sleep(interval_s)


class MeteredLLMServer(LLMServer):
    """ray.serve.llm's LLMServer whose engine metrics reach Ray through
    PrometheusToRay (`engine_metrics`, a bind argument) instead of Ray's
    per-value stat logger (the LLMConfig's log_engine_metrics, left off)."""

    async def __init__(self, llm_config: Any, *, engine_metrics: bool = True, **kwargs):
        await super().__init__(llm_config, **kwargs)
        self._engine_metrics_task = (
            asyncio.create_task(PrometheusToRay().copy_forever(), name="vllm-metrics-to-ray") if engine_metrics else None
        )

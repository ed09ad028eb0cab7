"""vLLM's Prometheus engine metrics copied into Ray gauges (deployments/llm_metrics.py):
the same series ray.serve.llm exports, histograms exact, nothing else copied."""
import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from ray.util.metrics import Gauge as RayGauge

from deployments.llm_metrics import PrometheusToRay

LABELS = {"model_name": "tiny-llama", "engine": "0"}


class RecordingGauge(RayGauge):
    """A real Ray gauge that also keeps what it was set to, for the asserts."""

    created: dict[str, "RecordingGauge"] = {}

    def __init__(self, name, description="", tag_keys=()):
        super().__init__(name, description=description, tag_keys=tag_keys)
        self.values: dict[tuple, float] = {}
        RecordingGauge.created[name] = self

    def set(self, value, tags=None):
        super().set(value, tags=tags)
        self.values[tuple(sorted((tags or {}).items()))] = value


def value(name: str, **labels: str) -> float:
    return RecordingGauge.created[name].values[tuple(sorted({**LABELS, **labels}.items()))]


@pytest.fixture
def registry():
    RecordingGauge.created = {}
    registry = CollectorRegistry()
    ttft = Histogram("vllm:time_to_first_token_seconds", "TTFT", list(LABELS), buckets=[0.01, 0.1, 1.0], registry=registry)
    for seconds in (0.005, 0.05, 0.5, 5.0):
        ttft.labels(**LABELS).observe(seconds)
    tokens = Counter("vllm:generation_tokens", "Generated tokens", list(LABELS), registry=registry)
    tokens.labels(**LABELS).inc(64)
    Gauge("vllm:num_requests_running", "Running", list(LABELS), registry=registry).labels(**LABELS).set(3)
    Counter("http_requests", "Not vLLM's", registry=registry).inc()
    registry.generation_tokens = tokens  # for the test that generates more
    return registry


def test_histograms_counters_and_gauges_keep_their_prometheus_series(registry):
    copier = PrometheusToRay(registry, gauge_cls=RecordingGauge)
    assert copier.copy_to_ray() == 4 + 2 + 1 + 1  # 4 buckets (+Inf), sum, count; counter; gauge
    assert set(RecordingGauge.created) == {
        "vllm_time_to_first_token_seconds_bucket", "vllm_time_to_first_token_seconds_sum",
        "vllm_time_to_first_token_seconds_count", "vllm_generation_tokens_total", "vllm_num_requests_running",
    }
    assert [value("vllm_time_to_first_token_seconds_bucket", le=le) for le in ("0.01", "0.1", "1.0", "+Inf")] == [1, 2, 3, 4]
    assert value("vllm_time_to_first_token_seconds_sum") == pytest.approx(5.555)  # exact, not bucket midpoints
    assert value("vllm_time_to_first_token_seconds_count") == 4
    assert value("vllm_generation_tokens_total") == 64
    assert value("vllm_num_requests_running") == 3
    assert RecordingGauge.created["vllm_time_to_first_token_seconds_bucket"].info["tag_keys"] == ("engine", "le", "model_name")


def test_a_later_copy_updates_the_same_gauges(registry):
    copier = PrometheusToRay(registry, gauge_cls=RecordingGauge)
    copier.copy_to_ray()
    gauges, before = dict(RecordingGauge.created), value("vllm_generation_tokens_total")
    registry.generation_tokens.labels(**LABELS).inc(36)
    copier.copy_to_ray()
    assert RecordingGauge.created == gauges
    assert value("vllm_generation_tokens_total") == before + 36


def test_a_failing_copy_is_logged_once_and_retried(registry, caplog):
    class Flaky:
        calls = 0

        def collect(self):
            Flaky.calls += 1
            if Flaky.calls <= 3:
                raise RuntimeError("registry busy")
            return registry.collect()

    async def run():
        task = asyncio.create_task(PrometheusToRay(Flaky(), gauge_cls=RecordingGauge).copy_forever(interval_s=0.01))
        while "vllm_num_requests_running" not in RecordingGauge.created:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(run(), timeout=10))
    assert Flaky.calls >= 4
    assert value("vllm_num_requests_running") == 3
    assert sum("copying vLLM's engine metrics to Ray failed" in r.getMessage() for r in caplog.records) == 1

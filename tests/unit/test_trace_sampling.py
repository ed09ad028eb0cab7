"""A caller's sampled `traceparent` traces no more of its requests than the
config's ratio (deployments/http/security/trace_sampling.py).

Each request is played as Serve plays it: the replica's request span is
started under OpenTelemetry's ParentBasedTraceIdRatio (Serve's own sampler),
continuing the caller's `traceparent`, and the app runs inside it. The app
makes a graph node span and propagates the context onward, as the LLM node's
HTTP call does. A private SDK TracerProvider records the spans (the global
one can be set once per process).
"""
from __future__ import annotations

import asyncio
import secrets

import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBasedTraceIdRatio
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from deployments.graph.tracing import node_span
from deployments.http import security
from deployments.http.security import trace_sampling
from tests.unit.asgi_calls import call_async


class Served:
    """An app behind the cap, and a stand-in for Serve's replica span."""

    def __init__(self, ratio: float | None, sampling_ratio: float = 0.05, draw=None):
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=ParentBasedTraceIdRatio(sampling_ratio))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")
        self.onward: list[str] = []  # the traceparent each request would send on
        app = FastAPI()

        @app.post("/")
        async def run():
            with node_span("recommend", "ranker", "triton_model", "inline", "hard", tracer=self.tracer):
                headers: dict[str, str] = {}
                inject(headers)
                self.onward.append(headers.get("traceparent", ""))
            return {}

        self.app = security.cap_caller_sampling(app, ratio)
        if draw is not None:
            self.app.user_middleware[0].kwargs["draw"] = draw

    def request(self, traceparent: str | None = None) -> None:
        async def serve() -> None:
            carried = TraceContextTextMapPropagator().extract({"traceparent": traceparent} if traceparent else {})
            with self.tracer.start_as_current_span("replica_handle_request GraphIngress __call__", context=carried):
                headers = [(b"traceparent", traceparent.encode())] if traceparent else []
                reply = await call_async(self.app, "/", headers=headers)
                assert reply.status == 200

        asyncio.run(serve())

    def node_spans(self) -> list:
        return [s for s in self.exporter.get_finished_spans() if s.name.startswith("graph.node")]


def says_sampled(traceparent: str) -> bool:
    """The W3C flags' sampled bit (the SDK may set the random-id bit too: `-03`)."""
    return bool(int(traceparent.rsplit("-", 1)[1], 16) & 1)


def sampled_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def test_with_ratio_zero_a_callers_sampled_flag_traces_nothing_past_the_app_and_propagates_not_sampled():
    served = Served(ratio=0.0)
    for _ in range(20):
        served.request(sampled_traceparent())
    assert served.node_spans() == []
    assert len(served.onward) == 20 and not any(map(says_sampled, served.onward))


def test_with_ratio_one_every_callers_sampled_request_is_traced_through():
    served = Served(ratio=1.0)
    parents = [sampled_traceparent() for _ in range(5)]
    for parent in parents:
        served.request(parent)
    assert len(served.node_spans()) == 5
    assert [header.split("-")[1] for header in served.onward] == [parent.split("-")[1] for parent in parents]
    assert all(map(says_sampled, served.onward))


def test_the_cap_draws_its_own_chance_so_a_chosen_trace_id_does_not_get_past_it():
    """The ratio sampler admits trace ids whose low 64 bits are small: a caller
    could pick such ids. The cap ignores the id: one draw per request."""
    draws = iter([0.01, 0.5, 0.99, 0.2, 0.04])
    served = Served(ratio=0.05, draw=lambda: next(draws))
    admitted_by_id = "00-4bf92f3577b34da60000000000000001-00f067aa0ba902b7-01"
    for _ in range(5):
        served.request(admitted_by_id)
    assert len(served.node_spans()) == 2  # the draws under 0.05: the first and the last
    assert [says_sampled(header) for header in served.onward] == [True, False, False, False, True]


def test_over_many_requests_the_share_traced_is_the_ratio():
    served = Served(ratio=0.2)
    for _ in range(400):
        served.request(sampled_traceparent())
    assert 40 <= len(served.node_spans()) <= 120  # 80 expected; p(outside) < 1e-6


def test_requests_serve_sampled_by_its_ratio_and_untraced_ones_pass_untouched():
    """No caller traceparent: Serve's ratio decided. A caller's `-00`: not traced."""
    served = Served(ratio=0.0, sampling_ratio=1.0)
    served.request()  # Serve's root sampler (ratio 1.0 here) traced it: the cap leaves it
    served.request(f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00")
    assert len(served.node_spans()) == 1
    assert [says_sampled(header) for header in served.onward] == [True, False]


def test_an_invalid_traceparent_is_not_a_callers_decision():
    """Serve's propagator ignores a malformed header and samples by its ratio;
    so does the cap (the request was not traced on the caller's word)."""
    served = Served(ratio=0.0, sampling_ratio=1.0)
    served.request("00-zz-not-a-trace-01")
    assert len(served.node_spans()) == 1


def test_without_a_ratio_the_cap_is_the_tracing_configs_sampling_ratio(monkeypatch):
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: TracerProvider(sampler=ParentBasedTraceIdRatio(0.05)))
    assert trace_sampling.configured_ratio() == 0.05
    cap = trace_sampling.CallerSamplingCap(app=None)
    assert cap.ratio() == 0.05


@pytest.mark.parametrize("provider", [trace.ProxyTracerProvider(), TracerProvider(sampler=ALWAYS_ON)])
def test_a_sampler_that_is_not_serves_ratio_leaves_callers_followed_and_says_so(monkeypatch, caplog, provider):
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    assert trace_sampling.configured_ratio() is None
    assert trace_sampling.CallerSamplingCap(app=None).ratio() == 1.0
    assert "callers are followed" in caplog.text


def test_the_ratio_is_an_app_arg_of_the_graph_and_the_chat_app_bounded_to_zero_one():
    from pydantic import ValidationError

    from apps.chat import ChatArgs
    from deployments.graph.args import GraphArgs

    for model in (GraphArgs, ChatArgs):
        field = model.model_fields["caller_sampling_ratio"]
        assert field.default is None
    with pytest.raises(ValidationError, match="caller_sampling_ratio"):
        ChatArgs.model_validate({"model": {"name": "m", "registry_uri": "sqlite:///x.db"}, "caller_sampling_ratio": 1.5})

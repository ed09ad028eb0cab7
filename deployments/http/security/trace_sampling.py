"""A caller's `traceparent` may not trace more requests than the config's ratio.

Ray Serve's proxy continues a caller's W3C trace context under OpenTelemetry's
ParentBasedTraceIdRatio sampler, which follows a remote parent: a caller that
sends `traceparent: 00-...-01` on every request has every request traced, and
makes the replicas build and export a dozen spans each (tracing every request
costs the ingress replica about a fifth of its CPU, docs/benchmarks.md) and
the collector take them all. Choosing the trace id does not help a cap either:
the ratio sampler's test is on the trace id, which the caller picks.

Serve builds that sampler itself and offers no hook, so the cap sits where the
app first runs, as an ASGI middleware: a request whose caller said sampled is
kept traced with probability `ratio` (our own draw, not the trace id); the
others run under a sampled-out copy of the request's span context, so no graph
span is made, and every call onward (DeploymentHandle calls, the LLM node's
HTTP `traceparent`) carries "not sampled": the other replicas and apps record
nothing either. A caller can still lower tracing (`-00`), never raise it.

`ratio` defaults to the Serve config's `tracing_config.sampling_ratio` (read
from the sampler Serve installed). 1.0 follows every caller: a laptop where the
developer asks for a trace (configs/local.yaml).

What the cap cannot reach: Serve's own spans before the app runs (the proxy's
two and the replica's request span) follow the caller as Serve decides.
"""
from __future__ import annotations

import logging
import random
import re
from typing import Callable, Optional

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

logger = logging.getLogger(__name__)

_TRACEPARENT = b"traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()
# ParentBasedTraceIdRatio(0.05).get_description():
# "ParentBased{root:TraceIdRatioBased{0.05},remoteParentSampled:AlwaysOnSampler,...}"
_ROOT_RATIO = re.compile(r"^ParentBased\{root:TraceIdRatioBased\{([0-9.eE+-]+)\}")


def configured_ratio() -> Optional[float]:
    """The root ratio of the sampler Serve installed in this process; None
    without an SDK TracerProvider (tracing off: nothing to cap) or with a
    sampler of another shape (someone installed their own: theirs decides)."""
    sampler = getattr(trace.get_tracer_provider(), "sampler", None)
    if sampler is None:
        return None
    match = _ROOT_RATIO.match(sampler.get_description())
    return float(match.group(1)) if match else None


def caller_sampled(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request's own `traceparent` header is valid and says sampled
    (what makes Serve's proxy trace it whatever the ratio)."""
    for name, value in headers:
        if name == _TRACEPARENT:
            carried = trace.get_current_span(_PROPAGATOR.extract({"traceparent": value.decode("latin-1")}))
            return carried.get_span_context().trace_flags.sampled
    return False


def sampled_out(span_context: SpanContext) -> otel_context.Context:
    """The current context with `span_context`'s trace and span ids but
    flags "not sampled": children are dropped by any parent-based sampler, and
    a propagated traceparent ends in -00."""
    copy = SpanContext(span_context.trace_id, span_context.span_id, is_remote=False,
                       trace_flags=TraceFlags(TraceFlags.DEFAULT), trace_state=span_context.trace_state)
    return trace.set_span_in_context(NonRecordingSpan(copy))


class CallerSamplingCap:
    """ASGI middleware: of the requests traced only because their caller's
    `traceparent` said sampled, keep `ratio` (default the Serve config's);
    run the rest sampled out. Requests Serve sampled by its ratio, and
    untraced ones, pass untouched; the check costs a flag test while the
    request is not traced."""

    def __init__(self, app, ratio: Optional[float] = None, draw: Callable[[], float] = random.random):
        self.app = app
        self._ratio = ratio
        self._draw = draw

    def ratio(self) -> float:
        if self._ratio is None:  # read at the first traced request: Serve sets its provider before that
            configured = configured_ratio()
            if configured is None:
                logger.warning("caller sampling cap: the tracer's sampler is not Serve's ratio sampler; callers are followed")
            self._ratio = 1.0 if configured is None else configured
        return self._ratio

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            span_context = trace.get_current_span().get_span_context()
            if span_context.trace_flags.sampled and caller_sampled(scope["headers"]) and self._draw() >= self.ratio():
                token = otel_context.attach(sampled_out(span_context))
                try:
                    await self.app(scope, receive, send)
                finally:
                    otel_context.detach(token)
                return
        await self.app(scope, receive, send)

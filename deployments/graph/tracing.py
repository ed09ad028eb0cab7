"""Spans of the graph executor: one per node call, one per routing step.

    with node_span(spec.name, name, node.kind, node.placement, node.dependency):
        output = await self._call(name, node, run.state)

    with step_span(spec.name, step.name, "split") as span:
        span.set_attribute("graph.route", variant.name)
        ...

Under Ray Serve with a `tracing_config` (observability/tracing.py) each replica
has a global TracerProvider and the request's span in OpenTelemetry's current
context, so these spans nest under it; a node placed as its own deployment is
called through a DeploymentHandle inside its node span, and Serve carries that
span to the other replica, where the trace goes on. A shadow's candidate runs in
a background task that copied the context, so its spans hang under the shadow
step even after the request's span has ended.

Without a TracerProvider (tests, notebooks, a config without tracing) no span
is made at all: OpenTelemetry's own no-op `start_as_current_span` costs
several times this module's check (see _GraphSpan). Nor under a request that
was sampled out (the configs trace 5 %): Serve's sampler follows the parent,
so every span under it would be dropped anyway, after the SDK built it; and
since Serve leaves a sampled-out request with no current span at all, a
graph span there would start a one-span trace of its own.
Configured and sampled, a recorded span costs what the SDK makes it cost,
plus the exporter's share.

Failures: the span records the exception, is marked ERROR with a readable
description (a GraphError's `message` plus `error.code`; anything else
`Type: text`) and the exception goes on unchanged. A soft node's failure is
marked too (the node did fail; `graph.node.dependency` says it was tolerated).
A cancelled span (a fanout sibling failed first) is not an error of its own: it
keeps status UNSET and gets `graph.cancelled`, so the trace shows one failure,
the real one.
"""
from __future__ import annotations

import asyncio
import sys
from types import TracebackType
from typing import Any, Callable, ContextManager, Optional

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, ProxyTracerProvider, Span, Status, StatusCode, Tracer

from deployments.errors import GraphError

TRACER_NAME = "serve_graphs.graph"

# A ProxyTracer: it delegates to whatever provider is set later (Serve sets
# one when the replica starts, after this module was imported).
_TRACER = trace.get_tracer(TRACER_NAME)


def node_span(
    graph: str, node: str, kind: str, placement: str, dependency: str, tracer: Optional[Tracer] = None
) -> ContextManager[Span]:
    """The span `graph.node <node>` around one node call (a context manager
    yielding the span). `tracer`: tests pass their own; default the global one."""
    return _GraphSpan(
        tracer,
        f"graph.node {node}",
        lambda: {
            "graph.name": graph,
            "graph.node": node,
            "graph.node.kind": kind,
            "graph.node.placement": placement,
            "graph.node.dependency": dependency,
        },
    )


def step_span(graph: str, step_name: str, kind: str, tracer: Optional[Tracer] = None) -> ContextManager[Span]:
    """The span `graph.<kind> <step>` around a routing step (switch, split,
    shadow); it yields the span so the caller sets `graph.route` once it knows
    the branch."""
    return _GraphSpan(
        tracer,
        f"graph.{kind} {step_name}",
        lambda: {"graph.name": graph, "graph.step": step_name, "graph.step.kind": kind},
    )


class _GraphSpan:
    """`tracer.start_as_current_span(name)` plus our attributes and failure
    handling (not the SDK's: its description would be `Type: message` for a
    GraphError too, and it would mark cancellations ERROR).

    A class, not a @contextmanager, and no span at all while no provider is
    set, or while the current span is one the sampler dropped (a child of a
    sampled-out span is sampled out: Serve's sampler is parent-based), or
    while a Serve request has no span at all (Serve sets its request span as
    the current one only when it was sampled):
    OpenTelemetry's own path (proxy tracer, a non-recording span, context
    attach/detach) costs several times these checks."""

    __slots__ = ("_tracer", "_name", "_attributes", "_scope", "_span")

    def __init__(self, tracer: Optional[Tracer], name: str, attributes: Callable[[], dict[str, Any]]):
        self._tracer = tracer
        self._name = name
        self._attributes = attributes
        self._scope: Optional[ContextManager[Span]] = None
        self._span: Span = INVALID_SPAN

    def __enter__(self) -> Span:
        tracer = self._tracer
        if tracer is None:
            if isinstance(trace.get_tracer_provider(), ProxyTracerProvider):
                return INVALID_SPAN  # nothing configured: a non-recording span, no context change
            tracer = _TRACER
        parent = trace.get_current_span().get_span_context()
        if parent.is_valid:
            if not parent.trace_flags.sampled:
                return INVALID_SPAN  # the request was sampled out: so would this span be
        elif _in_serve_request():
            # Serve makes its request span current only when it is sampled: a
            # request without one was sampled out. (A span here would start a
            # trace of its own, one node long, for 5 % of the nodes.)
            return INVALID_SPAN
        attributes = self._attributes()
        request_id = _request_id()
        if request_id is not None:
            attributes["request.id"] = request_id
        # Attributes at the start: the sampler sees them, and it is cheaper than setting them after.
        self._scope = tracer.start_as_current_span(
            self._name, attributes=attributes, record_exception=False, set_status_on_exception=False
        )
        self._span = self._scope.__enter__()
        return self._span

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> Optional[bool]:
        if self._scope is None:
            return None
        if isinstance(exc, Exception):
            failed(self._span, exc)
        elif isinstance(exc, asyncio.CancelledError) and self._span.is_recording():
            self._span.set_attribute("graph.cancelled", True)
        return self._scope.__exit__(exc_type, exc, tb)  # ends the span, restores the context; never swallows


def failed(span: Span, error: BaseException) -> None:
    """Mark `span` as failed by `error`: the exception event, `error.type`,
    `error.code` for a GraphError, status ERROR with the readable message."""
    if not span.is_recording():
        return
    span.record_exception(error)
    module, name = type(error).__module__, type(error).__qualname__
    span.set_attribute("error.type", f"{module}.{name}" if module != "builtins" else name)  # as exception.type
    if isinstance(error, GraphError):
        span.set_attribute("error.code", error.code)
        description = error.message
    else:
        description = f"{type(error).__name__}: {error}"
    span.set_status(Status(StatusCode.ERROR, description))


def _in_serve_request() -> bool:
    """Whether this runs for a request in a Serve replica (Serve set the
    request's context, with its id). Looked up in sys.modules: outside Ray
    (a notebook) the module is not loaded and graph spans may start traces."""
    serve_context = sys.modules.get("ray.serve.context")
    if serve_context is None:
        return False
    request = serve_context._serve_request_context.get()
    return request is not None and bool(request.request_id)


def _request_id() -> Optional[str]:
    """The request's id: deployments/http/security/request_id.py's when the app set one,
    else Ray Serve's (its proxy takes the client's `X-Request-ID` or makes one
    up, and carries it through every DeploymentHandle call: a node placed in
    its own deployment sees the same id as the ingress).

    Looked up in sys.modules, never imported: when the module is not loaded no
    app can have set an id, and a graph run in-process (a notebook) does not
    pay for importing the HTTP layer."""
    module = sys.modules.get("deployments.http.security.request_id")
    request_id = getattr(module, "current_request_id", None)  # None too while the module is still importing
    chosen = request_id.get() if request_id is not None else None
    if chosen is None and (serve_context := sys.modules.get("ray.serve.context")) is not None:
        chosen = serve_context._get_serve_request_context().request_id or None
    return chosen

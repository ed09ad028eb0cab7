"""Request traces: span exporters for Ray Serve's tracing, and a reader.

Ray Serve traces requests itself when a Serve config says so (top level, next
to `applications`):

    tracing_config:
      enabled: true
      exporter_import_path: observability.tracing:file_exporter   # :otlp_exporter on a cluster
      sampling_ratio: 0.05     # and every request whose traceparent says sampled

Each replica then calls the exporter once with its own file name
(`replica_<app>_<deployment>_<id>_tracing.json`) and installs a global
TracerProvider with the processors it returns. Serve opens a span per request
(continuing an HTTP `traceparent`) and carries it across DeploymentHandle calls;
the graph executor's node and step spans (deployments/graph/tracing.py) nest
under it.

- `file_exporter`: one compact JSON object per line per span, written as the
  span ends, in `$SERVE_GRAPHS_SPANS_DIR` or Serve's logs dir + `/spans`
  (`<Ray session>/logs/serve/spans`). Ray's own default writes the same files as
  pretty multi-line ConsoleSpanExporter JSON that nothing reads back.
- `otlp_exporter`: batches to an OpenTelemetry collector (Jaeger, Tempo, ...),
  configured by the standard OTEL_* variables.
- `read_spans` / `span_tree` / `render_tree`, and the CLI over them:

    python -m observability.tracing DIR                      # the most recent trace
    python -m observability.tracing DIR --trace-id 4bf92f3577b34da6a3ce929d0e0e4736

      trace 4bf92f3577b34da6a3ce929d0e0e4736  (7 spans)
      proxy_http_request GraphIngress POST  14.2 ms
        route_to_replica GraphIngress __call__  13.9 ms
          replica_handle_request GraphIngress __call__  12.9 ms
            graph.node features  1.1 ms
            graph.split ranker_ab  9.8 ms  -> challenger  [ERROR: ranker_b unavailable: ...]
              graph.node ranker_b  9.6 ms  [ERROR: ranker_b unavailable: ...]
            ...
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from opentelemetry.sdk.environment_variables import OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult

SPANS_DIR_ENV = "SERVE_GRAPHS_SPANS_DIR"

logger = logging.getLogger(__name__)


# ------------------------------------------------------------ exporters


def file_exporter() -> list[SpanProcessor]:
    """Serve's exporter hook (`tracing_config.exporter_import_path`; Serve calls
    a custom exporter with no arguments): spans as JSON lines in
    `spans_dir()/spans_<pid>.jsonl`, one file per replica process.

    A SimpleSpanProcessor, so a span is in the file (flushed to the OS, not
    fsynced) as soon as it ends, even if the replica dies next; the write
    happens in the thread that ends the span, the replica's event loop (an
    encode, a write and a flush per span): fine for a laptop or a debugging
    session, not for a loaded cluster (otlp_exporter there)."""
    directory = spans_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return [SimpleSpanProcessor(JsonLinesSpanExporter(directory / f"spans_{os.getpid()}.jsonl"))]


def otlp_exporter() -> list[SpanProcessor]:
    """Serve's exporter hook for clusters: a BatchSpanProcessor (a background
    thread sends batches; a request never waits on the collector) over an OTLP
    exporter. The collector tells replicas apart by span and resource attributes.

    Configured by the standard OpenTelemetry variables, which must reach the
    replicas (the Serve config's `runtime_env.env_vars`, or the Ray pods' env):
    - OTEL_EXPORTER_OTLP_PROTOCOL (or OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, which
      wins): `grpc` (default) or `http/protobuf`; anything else is refused;
    - OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4317 for grpc,
      http://localhost:4318 for http, where `/v1/traces` is appended) or
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as given);
    - OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _COMPRESSION, _CERTIFICATE and
      OTEL_EXPORTER_OTLP_INSECURE (grpc), each also with a `_TRACES_` variant;
    - OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_MAX_QUEUE_SIZE,
      OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_EXPORT_TIMEOUT: the batching;
    - OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES: the resource (read by the
      TracerProvider Serve creates).
    The exporters read these themselves; only the protocol is chosen here."""
    protocol = (os.environ.get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL) or os.environ.get(OTEL_EXPORTER_OTLP_PROTOCOL) or "grpc").strip()
    exporter: SpanExporter
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        exporter = GrpcExporter()
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        exporter = HttpExporter()
    else:
        raise ValueError(f"{OTEL_EXPORTER_OTLP_PROTOCOL}={protocol!r}: otlp_exporter speaks grpc or http/protobuf")
    return [BatchSpanProcessor(exporter)]


def spans_dir() -> Path:
    """`$SERVE_GRAPHS_SPANS_DIR`, else where Ray's default exporter writes."""
    configured = os.environ.get(SPANS_DIR_ENV)
    if configured:
        return Path(configured)
    from ray.serve._private.logging_utils import get_serve_logs_dir  # what Ray's default exporter uses

    return Path(get_serve_logs_dir()) / "spans"


class JsonLinesSpanExporter(SpanExporter):
    """Appends each span as one compact JSON line (`span_record`). One write
    and one flush per export under a lock: spans ended by several threads
    never interleave within a line."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        text = "".join(json.dumps(span_record(span), separators=(",", ":"), default=str) + "\n" for span in spans)
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            try:
                self._file.write(text)
                self._file.flush()
            except OSError:
                logger.exception("could not write spans to %s", self.path)
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every export already flushed

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One line of the spans file: ids as W3C hex (trace 32, span 16 chars;
    the parent null for a root), times in ns since the epoch."""
    context = span.get_span_context()
    start, end = span.start_time, span.end_time
    service = span.resource.attributes.get("service.name") if span.resource is not None else None
    return {
        "name": span.name,
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent is not None else None,
        "start_time_ns": start,
        "end_time_ns": end,
        "duration_ms": round((end - start) / 1e6, 3) if start is not None and end is not None else None,
        "kind": span.kind.name,
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": event.name, "time_ns": event.timestamp, "attributes": dict(event.attributes or {})}
            for event in span.events
        ],
        "service_name": service,
    }


# ------------------------------------------------------------ reading


def read_spans(directory: str | Path) -> list[dict[str, Any]]:
    """Every span in the `*.json` / `*.jsonl` files of `directory`.

    A last line without its newline is a span being written: ignored unless it
    parses. Other lines that are not spans (a file of Ray's default exporter in
    the same directory) are skipped with a warning naming the file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory")
    spans: list[dict[str, Any]] = []
    for path in sorted({*directory.glob("*.json"), *directory.glob("*.jsonl")}):
        spans.extend(_read_file(path))
    return spans


def _read_file(path: Path) -> Iterator[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    partial = lines.pop()  # "" when the file ends with a newline
    skipped = 0
    for line in lines:
        if line.strip():
            span = _parse(line)
            if span is None:
                skipped += 1
            else:
                yield span
    if partial.strip():
        span = _parse(partial)
        if span is not None:
            yield span
    if skipped:
        logger.warning("%s: skipped %d lines that are not spans of observability.tracing:file_exporter", path, skipped)


def _parse(line: str) -> Optional[dict[str, Any]]:
    try:
        span = json.loads(line)
    except ValueError:
        return None
    return span if isinstance(span, dict) and "trace_id" in span and "span_id" in span else None


@dataclass
class SpanNode:
    """A span (a `read_spans` record) and the spans it parents, by start time."""

    span: dict[str, Any]
    children: list[SpanNode] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.span.get("name", "?")

    def walk(self, depth: int = 0) -> Iterator[tuple[int, SpanNode]]:
        """This node and its descendants, depth first, with their depth."""
        yield depth, self
        for child in self.children:
            yield from child.walk(depth + 1)


def span_tree(spans: list[dict[str, Any]], trace_id: str) -> list[SpanNode]:
    """The spans of one trace as trees. Roots: spans without a parent, or whose
    parent is not in `spans` (a caller's span from a `traceparent` header, a
    replica whose file is elsewhere). A span read twice counts once."""
    trace_id = trace_id.lower()
    nodes: dict[str, SpanNode] = {}
    for span in spans:
        if span.get("trace_id") == trace_id:
            nodes.setdefault(span["span_id"], SpanNode(span))
    roots: list[SpanNode] = []
    for node in nodes.values():
        parent = nodes.get(node.span.get("parent_span_id") or "")
        (parent.children if parent is not None and parent is not node else roots).append(node)
    for node in nodes.values():
        node.children.sort(key=_start)
    return sorted(roots, key=_start)


def render_tree(roots: list[SpanNode]) -> str:
    """One line per span, indented by depth: `name  12.3 ms  -> route  [ERROR: description]`."""
    lines = []
    for root in roots:
        for depth, node in root.walk():
            line = f"{'  ' * depth}{node.name}  {_duration(node.span.get('duration_ms'))}"
            route = (node.span.get("attributes") or {}).get("graph.route")
            if route is not None:
                line += f"  -> {route}"
            if node.span.get("status") == "ERROR":
                description = node.span.get("status_description")
                line += f"  [ERROR: {description}]" if description else "  [ERROR]"
            lines.append(line)
    return "\n".join(lines)


def latest_trace(spans: list[dict[str, Any]]) -> Optional[str]:
    """The trace that started last (by its earliest span: a late shadow span
    does not make an old trace recent)."""
    started: dict[str, int] = {}
    for span in spans:
        start = span.get("start_time_ns") or 0
        trace_id = span["trace_id"]
        started[trace_id] = min(start, started.get(trace_id, start))
    return max(started, key=started.__getitem__) if started else None


def _start(node: SpanNode) -> tuple[int, str]:
    return node.span.get("start_time_ns") or 0, node.name


def _duration(duration_ms: Optional[float]) -> str:
    if duration_ms is None:
        return "? ms"
    return f"{duration_ms:.2f} ms" if duration_ms < 1 else f"{duration_ms:.1f} ms"


# ------------------------------------------------------------ CLI

_TRACE_ID = re.compile(r"[0-9a-fA-F]{32}")


def _trace_id(text: str) -> str:
    if not _TRACE_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a trace id (32 hex digits)")
    return text.lower()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m observability.tracing",
        description="Print one trace, as a tree, from the spans files of observability.tracing:file_exporter.",
    )
    parser.add_argument("directory", type=Path, help="the spans directory (e.g. <Ray session>/logs/serve/spans)")
    parser.add_argument("--trace-id", type=_trace_id, help="the trace to print (default: the most recent)")
    args = parser.parse_args(argv)
    try:
        spans = read_spans(args.directory)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    trace_id = args.trace_id or latest_trace(spans)
    if trace_id is None:
        print(f"{args.directory}: no spans", file=sys.stderr)
        return 1
    roots = span_tree(spans, trace_id)
    if not roots:
        print(f"trace {trace_id}: no spans in {args.directory}", file=sys.stderr)
        return 1
    count = sum(1 for root in roots for _ in root.walk())
    print(f"trace {trace_id}  ({count} span{'s' if count != 1 else ''})")
    print(render_tree(roots))
    return 0


if __name__ == "__main__":
    sys.exit(main())

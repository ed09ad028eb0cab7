"""Traces of the inference graphs.

- node_span / step_span make a tree of spans carrying the graph's attributes;
  a failure marks its span ERROR (a GraphError with its code) and goes on;
  without a TracerProvider they cost nothing visible and change nothing.
- file_exporter writes one JSON line per span that read_spans / span_tree
  rebuild into the same tree; a half-written last line is ignored; the CLI
  prints the tree of the latest trace, or of the one asked for.
- otlp_exporter batches to the OTLP protocol the standard env names.

No Ray and no global provider (it can be set once per process): the spans come
from private SDK TracerProviders, and node_span/step_span take their tracer.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import ProxyTracerProvider, StatusCode, Tracer

from deployments.http.security.request_id import current_request_id
from deployments.errors import BackendTimeout
from deployments.graph.errors import NodeFailed
from deployments.graph.tracing import node_span, step_span
from deployments.paths import PROJECT_ROOT
from observability import tracing
from observability.tracing import file_exporter, otlp_exporter, read_spans, render_tree, span_tree

SPANS_FILE = f"spans_{os.getpid()}.jsonl"  # file_exporter: one file per process


@dataclass
class Recorded:
    tracer: Tracer
    exporter: InMemorySpanExporter

    def spans(self) -> dict[str, ReadableSpan]:
        return {span.name: span for span in self.exporter.get_finished_spans()}


@pytest.fixture
def recorded():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Recorded(provider.get_tracer("test"), exporter)
    provider.shutdown()


def ranker(tracer: Tracer, dependency: str = "hard"):
    return node_span("recommend", "ranker_b", "triton_model", "deployment", dependency, tracer=tracer)


# ------------------------------------------------------------ node and step spans


def test_a_node_span_is_a_child_of_the_step_that_routed_to_it(recorded):
    with step_span("recommend", "ranker_ab", "split", tracer=recorded.tracer) as step:
        step.set_attribute("graph.route", "challenger")
        with ranker(recorded.tracer):
            pass

    spans = recorded.spans()
    split, node = spans["graph.split ranker_ab"], spans["graph.node ranker_b"]
    assert split.parent is None
    assert node.parent.span_id == split.context.span_id
    assert node.context.trace_id == split.context.trace_id
    assert dict(split.attributes) == {
        "graph.name": "recommend",
        "graph.step": "ranker_ab",
        "graph.step.kind": "split",
        "graph.route": "challenger",
    }
    assert dict(node.attributes) == {
        "graph.name": "recommend",
        "graph.node": "ranker_b",
        "graph.node.kind": "triton_model",
        "graph.node.placement": "deployment",
        "graph.node.dependency": "hard",
    }
    assert split.status.status_code == node.status.status_code == StatusCode.UNSET


def test_graph_spans_continue_the_current_span_which_under_serve_is_the_request(recorded):
    with recorded.tracer.start_as_current_span("replica_handle_request GraphIngress __call__") as request:
        with ranker(recorded.tracer):
            pass
    node = recorded.spans()["graph.node ranker_b"]
    assert node.parent.span_id == request.get_span_context().span_id


def test_under_a_sampled_out_request_no_graph_span_is_made():
    """The configs trace 5 % of requests; under one of the other 95 % (Serve's
    span exists but was not sampled) the graph's spans are not even built."""
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    built = []
    start = tracer.start_as_current_span
    tracer.start_as_current_span = lambda *args, **kwargs: built.append(args[0]) or start(*args, **kwargs)
    with tracer.start_as_current_span("replica_handle_request GraphIngress __call__") as request:
        assert request.get_span_context().is_valid and not request.is_recording()
        with step_span("recommend", "ranker_ab", "split", tracer=tracer) as step:
            step.set_attribute("graph.route", "challenger")
            with ranker(tracer) as node:
                assert not node.is_recording()
                assert trace.get_current_span() is request  # the context is left as it was
    assert built == ["replica_handle_request GraphIngress __call__"]  # the request's span only
    assert exporter.get_finished_spans() == ()
    provider.shutdown()


def test_a_serve_request_without_a_current_span_was_sampled_out_and_gets_no_graph_span(recorded):
    """Serve sets its request span as the current one only when it was
    sampled: the other 95 % run with Serve's request context and no span at
    all. A graph span there would start a trace of its own, one node long;
    none is made. Outside a Serve request (a notebook), graph spans still
    start traces."""
    import ray.serve.context as serve_context

    token = serve_context._serve_request_context.set(serve_context._RequestContext(request_id="req-1"))
    try:
        with step_span("recommend", "ranker_ab", "split", tracer=recorded.tracer), ranker(recorded.tracer) as node:
            assert not node.is_recording()
    finally:
        serve_context._serve_request_context.reset(token)
    assert recorded.exporter.get_finished_spans() == ()
    with ranker(recorded.tracer) as node:
        assert node.is_recording()
    assert list(recorded.spans()) == ["graph.node ranker_b"]


def test_concurrent_nodes_each_hang_under_the_step_that_started_them(recorded):
    async def node(name: str) -> None:
        with node_span("recommend", name, "python", "inline", "hard", tracer=recorded.tracer):
            await asyncio.sleep(0.01)

    async def flow() -> None:
        with step_span("recommend", "features", "switch", tracer=recorded.tracer):
            await asyncio.gather(node("user_features"), node("item_features"))
        with ranker(recorded.tracer):
            pass

    asyncio.run(flow())
    spans = recorded.spans()
    switch = spans["graph.switch features"]
    assert spans["graph.node user_features"].parent.span_id == switch.context.span_id
    assert spans["graph.node item_features"].parent.span_id == switch.context.span_id
    assert spans["graph.node ranker_b"].parent is None  # the step's context was restored


def test_the_request_id_is_an_attribute_when_the_app_set_one(recorded):
    token = current_request_id.set("req-7")
    try:
        with ranker(recorded.tracer):
            pass
    finally:
        current_request_id.reset(token)
    with step_span("recommend", "ranker_ab", "split", tracer=recorded.tracer):
        pass
    spans = recorded.spans()
    assert spans["graph.node ranker_b"].attributes["request.id"] == "req-7"
    assert "request.id" not in spans["graph.split ranker_ab"].attributes


def test_a_graph_error_marks_its_span_error_with_its_code_and_still_propagates(recorded):
    timeout = BackendTimeout("ranker_b", 0.5)
    with pytest.raises(BackendTimeout) as raised:
        with step_span("recommend", "ranker_ab", "split", tracer=recorded.tracer):
            with ranker(recorded.tracer):
                raise timeout
    assert raised.value is timeout

    spans = recorded.spans()
    for span in spans["graph.node ranker_b"], spans["graph.split ranker_ab"]:  # each span the error crossed
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == "ranker_b did not answer within 0.5 s"
        assert span.attributes["error.code"] == "backend_timeout"
        assert span.attributes["error.type"] == "deployments.errors.BackendTimeout"
        [event] = span.events
        assert event.name == "exception"
        assert event.attributes["exception.type"] == "deployments.errors.BackendTimeout"


def test_any_other_exception_is_described_by_its_type_and_text(recorded):
    with pytest.raises(ValueError):
        with ranker(recorded.tracer, dependency="soft"):
            raise ValueError("scores must be finite")
    span = recorded.spans()["graph.node ranker_b"]
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "ValueError: scores must be finite"
    assert "error.code" not in span.attributes
    assert span.attributes["error.type"] == "ValueError"
    assert span.attributes["graph.node.dependency"] == "soft"  # what tells a reader the request went on


def test_a_cancelled_node_is_not_an_error_of_its_own(recorded):
    async def flow() -> None:
        async def slow() -> None:
            with ranker(recorded.tracer):
                await asyncio.sleep(10)

        task = asyncio.ensure_future(slow())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(flow())
    span = recorded.spans()["graph.node ranker_b"]
    assert span.status.status_code == StatusCode.UNSET
    assert span.attributes["graph.cancelled"] is True


def test_without_a_tracer_provider_the_spans_record_nothing_and_change_nothing(monkeypatch):
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)  # as in a process where nobody set one
    assert isinstance(trace.get_tracer_provider(), ProxyTracerProvider)
    before = trace.get_current_span()
    with step_span("recommend", "ranker_ab", "split") as step:
        step.set_attribute("graph.route", "challenger")  # still callable
        with node_span("recommend", "ranker_b", "triton_model", "deployment", "hard") as node:
            assert not node.is_recording() and not step.is_recording()
            assert trace.get_current_span() is before
    with pytest.raises(NodeFailed):
        with node_span("recommend", "ranker_b", "triton_model", "deployment", "hard"):
            raise NodeFailed("ranker_b", "boom")


# ------------------------------------------------------------ the spans files


@pytest.fixture
def spans_dir(tmp_path, monkeypatch):
    directory = tmp_path / "spans"
    monkeypatch.setenv("SERVE_GRAPHS_SPANS_DIR", str(directory))
    return directory


def traced_request(tracer: Tracer) -> None:
    """What one request of the recommend graph leaves: the replica's span,
    a node, a split whose chosen variant failed (the request answered 503)."""
    with tracer.start_as_current_span("replica_handle_request GraphIngress __call__"):
        with node_span("recommend", "features", "feature_lookup", "inline", "hard", tracer=tracer):
            pass
        with pytest.raises(NodeFailed):
            with step_span("recommend", "ranker_ab", "split", tracer=tracer) as step:
                step.set_attribute("graph.route", "challenger")
                with ranker(tracer):
                    raise NodeFailed("ranker_b", "RuntimeError: no model")


def file_provider(memory: InMemorySpanExporter | None = None) -> TracerProvider:
    """A provider as Serve sets one up in a replica: file_exporter's processors."""
    provider = TracerProvider(resource=Resource.create({"service.name": "serve-graphs"}))
    for processor in file_exporter():
        provider.add_span_processor(processor)
    if memory is not None:
        provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider


def test_the_file_exporter_writes_one_json_line_per_span_as_it_ends(spans_dir):
    provider = file_provider()
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("replica_handle_request GraphIngress __call__"):
        with ranker(tracer):
            pass
        # on disk before the request's span ends, nothing flushed or shut down
        [line] = (spans_dir / SPANS_FILE).read_text().splitlines()
    provider.shutdown()

    record = json.loads(line)
    assert line == json.dumps(record, separators=(",", ":"))  # compact: one object, no pretty-printing
    assert record["name"] == "graph.node ranker_b"
    assert re.fullmatch(r"[0-9a-f]{32}", record["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", record["span_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", record["parent_span_id"])
    assert isinstance(record["start_time_ns"], int) and record["end_time_ns"] >= record["start_time_ns"]
    assert record["duration_ms"] == round((record["end_time_ns"] - record["start_time_ns"]) / 1e6, 3)
    assert record["kind"] == "INTERNAL"
    assert (record["status"], record["status_description"]) == ("UNSET", None)
    assert record["attributes"]["graph.node.placement"] == "deployment"
    assert record["service_name"] == "serve-graphs"
    request = json.loads((spans_dir / SPANS_FILE).read_text().splitlines()[-1])
    assert request["parent_span_id"] is None and record["parent_span_id"] == request["span_id"]


def test_without_the_env_spans_go_where_ray_writes_its_own(monkeypatch, tmp_path):
    from ray.serve._private.logging_utils import get_serve_logs_dir

    monkeypatch.delenv("SERVE_GRAPHS_SPANS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # outside Ray, Serve's logs dir is ./serve
    assert tracing.spans_dir() == Path(get_serve_logs_dir()) / "spans"


def test_read_spans_and_span_tree_rebuild_the_tree_the_tracer_made(spans_dir):
    memory = InMemorySpanExporter()
    provider = file_provider(memory)
    traced_request(provider.get_tracer("test"))
    provider.shutdown()

    made = memory.get_finished_spans()
    trace_id = format(made[0].context.trace_id, "032x")
    [root] = span_tree(read_spans(spans_dir), trace_id)

    assert [(depth, node.name) for depth, node in root.walk()] == [
        (0, "replica_handle_request GraphIngress __call__"),
        (1, "graph.node features"),
        (1, "graph.split ranker_ab"),
        (2, "graph.node ranker_b"),
    ]
    ids = {span.name: format(span.context.span_id, "016x") for span in made}
    assert {node.name: node.span["span_id"] for _, node in root.walk()} == ids
    failed = root.children[1].children[0].span
    assert (failed["status"], failed["status_description"]) == ("ERROR", "node ranker_b failed: RuntimeError: no model")
    assert failed["attributes"]["error.code"] == "node_failed"
    assert [event["name"] for event in failed["events"]] == ["exception"]

    lines = render_tree([root]).splitlines()
    assert re.fullmatch(r"replica_handle_request GraphIngress __call__  \d+\.\d+ ms", lines[0])
    assert re.fullmatch(r"  graph\.node features  \d+\.\d+ ms", lines[1])
    assert re.fullmatch(r"  graph\.split ranker_ab  \d+\.\d+ ms  -> challenger  \[ERROR: node ranker_b failed: RuntimeError: no model\]", lines[2])
    assert re.fullmatch(r"    graph\.node ranker_b  \d+\.\d+ ms  \[ERROR: node ranker_b failed: RuntimeError: no model\]", lines[3])


def test_a_half_written_last_line_is_ignored(spans_dir, caplog):
    provider = file_provider()
    traced_request(provider.get_tracer("test"))
    provider.shutdown()
    path = spans_dir / SPANS_FILE
    complete = path.read_text().splitlines()
    with path.open("a") as spans_file:
        spans_file.write(complete[0][:40])  # a replica in the middle of a write

    assert [span["span_id"] for span in read_spans(spans_dir)] == [json.loads(line)["span_id"] for line in complete]
    assert not caplog.records


def test_files_that_are_not_json_lines_are_skipped_with_a_warning(spans_dir, caplog):
    provider = file_provider()
    traced_request(provider.get_tracer("test"))
    provider.shutdown()
    (spans_dir / "replica_app_Other_xyz_tracing.json").write_text('{\n    "name": "route_to_replica",\n    "context": {}\n}\n')

    assert len(read_spans(spans_dir)) == 4
    assert "replica_app_Other_xyz_tracing.json: skipped 4 lines" in caplog.text


def test_the_cli_prints_the_latest_trace_or_the_one_asked_for(spans_dir):
    memory = InMemorySpanExporter()
    provider = file_provider(memory)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("an older request"):
        pass
    traced_request(tracer)
    provider.shutdown()
    finished = memory.get_finished_spans()
    older, latest = (format(span.context.trace_id, "032x") for span in (finished[0], finished[-1]))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "observability.tracing", str(spans_dir), *args], capture_output=True, text=True, cwd=PROJECT_ROOT
        )

    shown = cli()
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"trace {latest}  (4 spans)"
    assert [line.strip().split("  ")[0] for line in lines[1:]] == [
        "replica_handle_request GraphIngress __call__",
        "graph.node features",
        "graph.split ranker_ab",
        "graph.node ranker_b",
    ]
    assert lines[4].startswith("    graph.node ranker_b  ") and lines[4].endswith("[ERROR: node ranker_b failed: RuntimeError: no model]")

    asked = cli("--trace-id", older.upper())
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.splitlines()[0] == f"trace {older}  (1 span)"
    assert re.fullmatch(r"an older request  \d+\.\d+ ms", asked.stdout.splitlines()[1])

    unknown = cli("--trace-id", "0" * 31 + "1")
    assert unknown.returncode == 1 and "no spans" in unknown.stderr


# ------------------------------------------------------------ OTLP


@pytest.fixture
def otel_env(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # never reached: no span is exported
    return monkeypatch


@pytest.mark.parametrize(
    "env, exporter_type",
    [
        ({}, GrpcExporter),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, GrpcExporter),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, HttpExporter),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, HttpExporter),
    ],
)
def test_the_otlp_exporter_batches_over_the_protocol_the_env_names(otel_env, env, exporter_type):
    for name, value in env.items():
        otel_env.setenv(name, value)
    threads = set(threading.enumerate())
    [processor] = otlp_exporter()
    try:
        assert isinstance(processor, BatchSpanProcessor)
        assert type(processor.span_exporter) is exporter_type
    finally:
        processor.shutdown()
    assert not {thread for thread in threading.enumerate() if thread.is_alive()} - threads  # the batch thread is gone


def test_an_otlp_protocol_it_does_not_speak_is_refused(otel_env):
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="http/json"):
        otlp_exporter()


@pytest.mark.parametrize("config", ["configs/local.yaml", "configs/cluster.yaml"])
def test_the_configs_exporters_pass_serves_own_checks(config, spans_dir, monkeypatch):
    """What a replica runs at start (ray.serve._private.tracing_utils): a custom
    exporter is a function of no arguments returning SpanProcessors. An
    exporter Serve refuses fails every replica of every app."""
    import yaml
    from ray._common.utils import import_attr
    from ray.serve._private.tracing_utils import _validate_tracing_exporter, _validate_tracing_exporter_processors
    from ray.serve.schema import TracingConfig

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    tracing_config = TracingConfig.model_validate(yaml.safe_load((PROJECT_ROOT / config).read_text())["tracing_config"])
    exporter = import_attr(tracing_config.exporter_import_path)
    _validate_tracing_exporter(exporter)
    processors = exporter()
    _validate_tracing_exporter_processors(processors)
    for processor in processors:
        processor.shutdown()

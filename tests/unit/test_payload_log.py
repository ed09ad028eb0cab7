"""Payload logging (deployments/payloads): each request of a graph, its
answer, chosen nodes' outputs and the model versions, as CloudEvents to a
sink; sampled, redacted, bounded, and never in the request's way. Here the
graph runs in-process with real sinks: rotated files and a real HTTP
receiver (tests/integration/test_payload_log.py: Redis Streams, and the
graph under Serve)."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from apps.graph import in_process, parse_args
from deployments.errors import InvalidInput
from deployments.graph.validate import GraphSpecError
from deployments.payloads import PayloadLogConfig, PayloadLogger
from deployments.payloads.events import EVENT_TYPE
from deployments.payloads.logger import QUEUE_FULL, SINK_ERROR, WRITTEN
from tests.graph_callables import graph_args, py, sequence
from tests.servers import free_port


def scoring_graph(payload_log: dict) -> dict:
    """x -> model-like scores -> the answer; the scores name their model."""
    nodes = {"ranker": py("scores", n="request.x")}
    args = graph_args(nodes, sequence("ranker"), {"scores": "ranker.scores", "model": "ranker.model"})
    args["payload_log"] = payload_log
    return args


def records(directory: Path, graph: str = "test") -> list[dict]:
    """Every record of the graph's files, rotated ones included."""
    lines = [line for path in sorted((directory / graph).glob("*.jsonl*")) for line in path.read_text().splitlines()]
    return [json.loads(line) for line in lines]


def serve_requests(executor, bodies) -> list:
    async def scenario():
        return await asyncio.gather(*[executor.run(body) for body in bodies], return_exceptions=True)

    return asyncio.run(scenario())


# -- what a record holds ------------------------------------------------------


def test_every_request_is_a_cloudevent_with_request_answer_model_and_timings(tmp_path):
    executor = in_process(scoring_graph({"nodes": ["ranker"], "sink": {"kind": "file", "directory": str(tmp_path)}}))
    answers = serve_requests(executor, [{"x": n} for n in (1, 2, 3)])
    assert executor.payloads.flush(5)

    logged = records(tmp_path)
    assert len(logged) == 3 and executor.payloads.counts[WRITTEN] == 3
    assert len({r["id"] for r in logged}) == 3  # a request id each
    first = min(logged, key=lambda r: r["data"]["request"]["x"])
    assert {k: first[k] for k in ("specversion", "source", "type", "datacontenttype")} == {
        "specversion": "1.0", "source": "graph/test", "type": EVENT_TYPE, "datacontenttype": "application/json"}
    assert first["time"].endswith("Z")
    data = first["data"]
    assert (data["graph"], data["status"], data["error"]) == ("test", 200, None)
    assert data["request"] == {"x": 1, "user_id": 0}  # as the graph read it, defaults filled in
    assert data["response"] == answers[0].output
    assert data["models"] == {"ranker": {"name": "fake+0", "version": "1", "alias": "x"}}
    assert data["nodes"] == {"ranker": {"scores": [0.0], "model": data["models"]["ranker"]}}
    assert data["latency_ms"]["total"] > 0 and "ranker" in data["latency_ms"]


def test_a_refused_request_is_logged_with_its_status_and_error(tmp_path):
    executor = in_process(scoring_graph({"sink": {"kind": "file", "directory": str(tmp_path)}}))
    (refused,) = serve_requests(executor, [{"x": "many"}])
    assert isinstance(refused, InvalidInput)
    assert executor.payloads.flush(5)
    (record,) = records(tmp_path)
    assert record["data"]["status"] == 422 and record["data"]["error"]["code"] == "invalid_request"
    assert record["data"]["request"] == {"x": "many"} and record["data"]["response"] is None
    assert record["data"]["nodes"] == {}  # nothing was asked for


def test_redacted_fields_never_reach_the_sink(tmp_path):
    executor = in_process(scoring_graph({"nodes": ["ranker"], "redact": ["request.user_id", "response.model", "nodes.ranker"],
                                         "sink": {"kind": "file", "directory": str(tmp_path)}}))
    serve_requests(executor, [{"x": 2, "user_id": 4242}])
    assert executor.payloads.flush(5)
    (record,) = records(tmp_path)
    data = record["data"]
    assert data["request"] == {"x": 2, "user_id": "[redacted]"}
    assert data["response"]["model"] == "[redacted]" and data["response"]["scores"] == [0.0, 0.1]
    assert data["nodes"] == {"ranker": "[redacted]"}
    assert "4242" not in (tmp_path / "test").joinpath(next((tmp_path / "test").iterdir()).name).read_text()


def test_a_sample_of_the_requests_is_logged(tmp_path):
    draws = iter([0.1, 0.9, 0.2, 0.8])
    config = PayloadLogConfig(sample_ratio=0.5, sink={"kind": "file", "directory": str(tmp_path)})
    executor = in_process(scoring_graph({}))
    executor.payloads = PayloadLogger("test", config, draw=lambda: next(draws))
    serve_requests(executor, [{"x": n} for n in (1, 2, 3, 4)])
    assert executor.payloads.flush(5)
    assert sorted(r["data"]["request"]["x"] for r in records(tmp_path)) == [1, 3]  # the draws under 0.5


def test_files_rotate_at_their_size_and_keep_only_their_backups(tmp_path):
    config = {"sink": {"kind": "file", "directory": str(tmp_path), "max_bytes": 4096, "backups": 2}}
    executor = in_process(scoring_graph(config))
    for start in range(0, 200, 20):  # in waves, so that the writer writes several batches
        serve_requests(executor, [{"x": 5} for _ in range(20)])
        assert executor.payloads.flush(5)
    files = sorted(p.name for p in (tmp_path / "test").iterdir())
    assert len(files) == 3 and files[0].endswith(".jsonl") and files[1].endswith(".jsonl.1")
    assert all((tmp_path / "test" / name).stat().st_size <= 4096 for name in files)
    assert executor.payloads.counts[WRITTEN] == 200 and len(records(tmp_path)) < 200  # the oldest rotated away


# -- never in the request's way -----------------------------------------------


class Receiver:
    """A CloudEvents HTTP receiver on loopback that keeps what it got; `mode`
    makes it slow (each POST takes `slow_s`) or failing (500)."""

    def __init__(self, slow_s: float = 0.3):
        self.mode, self.slow_s = "healthy", slow_s
        self.got: list[tuple[dict[str, str], dict]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/events"

        async def receive(request: Request) -> Response:
            body = json.loads(await request.body())
            if self.mode == "slow":
                await asyncio.sleep(self.slow_s)
            if self.mode == "failing":
                return Response("down", status_code=500)
            self.got.append((dict(request.headers), body))
            return Response(status_code=202)

        app = Starlette(routes=[Route("/events", receive, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *_):
        self.server.should_exit = True
        self.thread.join(10)


def test_the_http_sink_posts_binary_mode_cloudevents_with_the_request_id():
    with Receiver() as receiver:
        executor = in_process(scoring_graph({"sink": {"kind": "http", "url": receiver.url}}))
        executor.payloads.request_id = lambda: "req-7"
        serve_requests(executor, [{"x": 1}])
        assert executor.payloads.flush(5)
        executor.payloads.close()
    ((headers, body),) = receiver.got
    assert (headers["ce-id"], headers["ce-source"], headers["ce-type"], headers["ce-specversion"]) == (
        "req-7", "graph/test", EVENT_TYPE, "1.0")
    assert headers["content-type"] == "application/json" and "ce-time" in headers
    assert body["status"] == 200 and body["request"]["x"] == 1


def test_a_slow_sink_drops_what_the_queue_cannot_hold_and_requests_do_not_wait():
    with Receiver(slow_s=0.5) as receiver:
        receiver.mode = "slow"
        executor = in_process(scoring_graph({"queue_size": 5, "sink": {"kind": "http", "url": receiver.url}}))
        answers = serve_requests(executor, [{"x": 1} for _ in range(60)])
        assert all(not isinstance(a, Exception) for a in answers)  # every request answered
        counts = executor.payloads.counts
        assert counts[QUEUE_FULL] >= 40, counts  # the writer holds at most a batch and the queue 5
        receiver.mode = "healthy"
        assert executor.payloads.flush(10)
        serve_requests(executor, [{"x": 2}])
        assert executor.payloads.flush(5)
        executor.payloads.close()
    assert counts[WRITTEN] + counts[QUEUE_FULL] + counts[SINK_ERROR] == 61
    assert receiver.got[-1][1]["request"]["x"] == 2  # the queue drained: logging went on


def test_a_failing_sink_counts_its_drops_and_logging_resumes_when_it_is_back():
    with Receiver() as receiver:
        receiver.mode = "failing"
        executor = in_process(scoring_graph({"sink": {"kind": "http", "url": receiver.url}}))
        answers = serve_requests(executor, [{"x": 1} for _ in range(5)])
        assert all(not isinstance(a, Exception) for a in answers)
        assert executor.payloads.flush(5)
        assert executor.payloads.counts[SINK_ERROR] == 5 and executor.payloads.counts[WRITTEN] == 0
        receiver.mode = "healthy"
        deadline = time.monotonic() + 15  # the writer backs off, then tries again by itself
        while executor.payloads.counts[WRITTEN] == 0 and time.monotonic() < deadline:
            serve_requests(executor, [{"x": 3}])
            executor.payloads.flush(5)
            time.sleep(0.1)
        executor.payloads.close()
    assert executor.payloads.counts[WRITTEN] >= 1
    assert receiver.got and receiver.got[-1][1]["request"]["x"] == 3


# -- bad settings -------------------------------------------------------------


@pytest.mark.parametrize(
    "payload_log, path, reason",
    [
        ({"nodes": ["rank"]}, "payload_log.nodes[0]", "no node 'rank' in the graph"),
        ({"redact": ["request.email"]}, "payload_log.redact[0]", "no request field 'email'"),
        ({"redact": ["response.items"]}, "payload_log.redact[0]", "no response field 'items'"),
        ({"redact": ["nodes.ranker"]}, "payload_log.redact[0]", "no logged node 'ranker'"),
        ({"redact": ["headers.authorization"]}, "payload_log.redact[0]", "expected request.<field>"),
        ({"sample_ratio": 1.5}, "payload_log.sample_ratio", "less than or equal to 1"),
        ({"queue_size": 0}, "payload_log.queue_size", "greater than or equal to 1"),
        ({"sink": {"kind": "kafka"}}, "payload_log.sink", "kafka"),
        ({"sink": {"kind": "redis"}}, "payload_log.sink.redis", "give url or url_env, exactly one"),
        ({"sink": {"kind": "file", "max_bytes": 10}}, "payload_log.sink.file.max_bytes", "greater than or equal to 4096"),
    ],
)
def test_bad_payload_log_settings_are_refused_with_the_path_of_the_key(payload_log, path, reason):
    with pytest.raises(GraphSpecError) as raised:
        parse_args(scoring_graph(payload_log))
    found = {problem.path: problem.message for problem in raised.value.problems}
    assert any(p.startswith(path) and reason in m for p, m in found.items()), found


# -- the reader command -------------------------------------------------------


def test_the_reader_shows_the_last_records_of_every_replica_merged_by_time(tmp_path, capsys):
    import yaml

    from cli import payloads as reader

    args = scoring_graph({"sink": {"kind": "file", "directory": str(tmp_path / "logs")}})
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"applications": [{"name": "test", "import_path": "apps.graph:build", "args": args}]}))
    executors = {}
    for replica in ("a", "b"):  # two replicas, each its own file
        executors[replica] = in_process(args)
        executors[replica].payloads.close()
        executors[replica].payloads = PayloadLogger("test", parse_args(args).payload_log, writer=f"replica-{replica}")
    for x, replica in ((1, "a"), (2, "b"), (3, "a"), (4, "b")):  # interleaved in time
        serve_requests(executors[replica], [{"x": x}])
        time.sleep(0.002)
    for executor in executors.values():
        executor.payloads.close()
    with open(tmp_path / "logs" / "test" / "replica-a.jsonl", "a") as cut:
        cut.write('{"specversion": "1.0", "id": "cut sh')  # a replica that died mid-line

    reader.main([str(config), "-n", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert [json.loads(line.split("  ")[-1])["x"] for line in lines] == [2, 3, 4]  # by time, across files
    assert all("  200  ranker=fake+0 v1  " in line and " ms  " in line for line in lines)

    reader.main([str(config), "-n", "1", "--json"])
    (whole,) = capsys.readouterr().out.splitlines()
    assert json.loads(whole)["data"]["request"]["x"] == 4

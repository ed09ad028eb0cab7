"""Show the last payload log records of a graph, read from the sink its
config names (deployments/payloads): the files of every replica, merged by
time, or the Redis stream.

    python -m cli.payloads configs/local.yaml                 # recommend's last 5, one line each
    python -m cli.payloads configs/local.yaml -n 20 --app recommend
    python -m cli.payloads configs/local.yaml --json          # whole CloudEvents, one per line
    python -m cli.payloads configs/local.yaml --id <request id>

An HTTP sink's records are with its receiver; the command says so.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from deployments.graph.args import args_from_config, parse_args
from deployments.payloads.config import FileSink, PayloadLogConfig, RedisSink


def file_records(sink: FileSink, graph: str) -> list[dict[str, Any]]:
    """Every record in the graph's files (each replica's, rotated ones too), oldest first."""
    found = []
    for path in sorted((Path(sink.directory) / graph).glob("*.jsonl*")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:  # a line cut short by a replica that died mid-write
                continue
    return sorted(found, key=lambda record: record.get("time", ""))


def redis_records(sink: RedisSink, graph: str, count: int) -> list[dict[str, Any]]:
    """The stream's last `count` records, oldest first."""
    import redis

    url = sink.url if sink.url is not None else os.environ.get(sink.url_env or "", "")
    if not url:
        raise SystemExit(f"payload_log.sink.url_env: set {sink.url_env} to the Redis URL to read the stream")
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    entries = client.xrevrange(sink.stream or f"payloads:{graph}", count=count)
    return [json.loads(fields[b"event"]) for _, fields in reversed(entries)]


def summary(record: dict[str, Any]) -> str:
    """One line: when, request id, status, the models and routes, the total latency, the request."""
    data = record.get("data", {})
    models = ", ".join(f"{node}={m.get('name')} v{m.get('version')}" for node, m in (data.get("models") or {}).items())
    routes = ", ".join(f"{step}={route}" for step, route in (data.get("routes") or {}).items())
    parts = [record.get("time", "?"), record.get("id", "?"), str(data.get("status"))]
    if data.get("error"):
        parts.append(f"error={data['error'].get('code')}")
    if models:
        parts.append(models)
    if routes:
        parts.append(routes)
    parts.append(f"{(data.get('latency_ms') or {}).get('total', '?')} ms")
    parts.append(json.dumps(data.get("request"), separators=(",", ":"))[:120])
    return "  ".join(parts)


def payload_config(config_path: str, app: Optional[str]) -> tuple[str, PayloadLogConfig]:
    with open(config_path) as handle:
        config = yaml.safe_load(handle)
    args = parse_args(args_from_config(config, app or ("recommend" if _has_app(config, "recommend") else None)))
    if args.payload_log is None:
        raise SystemExit(f"{config_path}: the graph {args.graph.name} has no payload_log")
    return args.graph.name, args.payload_log


def _has_app(config: dict, name: str) -> bool:
    return any(a.get("name") == name for a in config.get("applications", []))


def last(graph: str, config: PayloadLogConfig, count: int, request_id: Optional[str] = None) -> list[dict[str, Any]]:
    sink = config.sink
    if isinstance(sink, FileSink):
        found = file_records(sink, graph)
    elif isinstance(sink, RedisSink):
        found = redis_records(sink, graph, count if request_id is None else sink.maxlen)
    else:
        raise SystemExit(f"graph {graph} logs to an HTTP receiver ({sink.url}): its records are there")
    if request_id is not None:
        found = [record for record in found if record.get("id") == request_id]
    return found[-count:]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the Serve config the graph was deployed from")
    parser.add_argument("--app", help="the graph application (default: recommend, or the only graph app)")
    parser.add_argument("-n", type=int, default=5, help="how many records (default 5)")
    parser.add_argument("--id", dest="request_id", help="only the record of this request id")
    parser.add_argument("--json", action="store_true", help="whole records, one JSON object per line")
    args = parser.parse_args(argv)
    graph, config = payload_config(args.config, args.app)
    records = last(graph, config, args.n, args.request_id)
    if not records:
        print(f"no payload records of graph {graph} yet", file=sys.stderr)
    for record in records:
        print(json.dumps(record) if args.json else summary(record))


if __name__ == "__main__":
    main()

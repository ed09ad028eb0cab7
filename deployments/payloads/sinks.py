"""Where payload records go. Each sink writes a batch of encoded events and
raises when it cannot; the writer (deployments/payloads/logger.py) counts the
batch as dropped, waits, and tries the next one: a sink that comes back is
written to again without anyone restarting anything."""
from __future__ import annotations

import logging
import logging.handlers
import os
import re
from pathlib import Path
from typing import Any, Protocol

from deployments.payloads.config import FileSink, HttpSink, RedisSink
from deployments.payloads.events import encode


class Sink(Protocol):
    def write(self, events: list[tuple[dict[str, Any], str]]) -> None: ...  # (event, its JSON)

    def close(self) -> None: ...

    def describe(self) -> str: ...


def writer_name(name: str) -> str:
    """A file name from a replica's or process's name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class FileWriter:
    """JSON lines through the standard library's size-rotating file handler."""

    def __init__(self, config: FileSink, graph: str, writer: str):
        self.path = Path(config.directory) / graph / f"{writer_name(writer)}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=config.max_bytes, backupCount=config.backups, encoding="utf-8", delay=True)
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        # The handler reports its own failures to stderr and carries on; a
        # sink must raise instead, so that the writer counts the drop.
        self._handler.handleError = self._raise

    @staticmethod
    def _raise(record: logging.LogRecord) -> None:
        raise

    def write(self, events: list[tuple[dict[str, Any], str]]) -> None:
        for _, line in events:
            self._handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO"}))
        self._handler.flush()

    def close(self) -> None:
        self._handler.close()

    def describe(self) -> str:
        return f"file {self.path}"


class RedisStreamWriter:
    """XADD each event (field `event`: its JSON) to one stream, trimmed to MAXLEN."""

    def __init__(self, config: RedisSink, graph: str, writer: str):
        import redis

        url = config.url if config.url is not None else os.environ.get(config.url_env or "", "")
        if not url:
            raise ValueError(f"payload_log.sink.url_env: {config.url_env} is not set in this replica's environment")
        self.stream = config.stream or f"payloads:{graph}"
        self.config = config
        self._client = redis.Redis.from_url(url, socket_timeout=config.timeout_s, socket_connect_timeout=config.timeout_s)
        self._where = url.split("@")[-1]  # no password in messages

    def write(self, events: list[tuple[dict[str, Any], str]]) -> None:
        pipeline = self._client.pipeline(transaction=False)
        for _, line in events:
            pipeline.xadd(self.stream, {"event": line}, maxlen=self.config.maxlen, approximate=not self.config.exact_trim)
        pipeline.execute()

    def close(self) -> None:
        self._client.close()

    def describe(self) -> str:
        return f"redis stream {self.stream} at {self._where}"


class HttpWriter:
    """One POST per event in CloudEvents' binary content mode: the attributes
    as `ce-*` headers, the data as the JSON body (KServe's logger convention)."""

    def __init__(self, config: HttpSink, graph: str, writer: str):
        import httpx

        self.config = config
        self._client = httpx.Client(timeout=config.timeout_s)

    def write(self, events: list[tuple[dict[str, Any], str]]) -> None:
        for event, _ in events:
            headers = {f"ce-{key}": str(value) for key, value in event.items() if key not in ("data", "datacontenttype")}
            headers["content-type"] = event.get("datacontenttype", "application/json")
            body = encode(event["data"])
            self._client.post(self.config.url, content=body, headers=headers).raise_for_status()

    def close(self) -> None:
        self._client.close()

    def describe(self) -> str:
        return f"http {self.config.url}"


def open_sink(config: FileSink | RedisSink | HttpSink, graph: str, writer: str) -> Sink:
    kinds = {"file": FileWriter, "redis": RedisStreamWriter, "http": HttpWriter}
    return kinds[config.kind](config, graph, writer)

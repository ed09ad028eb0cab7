"""One logged request as a CloudEvent (CloudEvents 1.0, structured JSON).

    {"specversion": "1.0", "id": "<request id>", "source": "graph/recommend",
     "type": "io.serve-graphs.inference", "time": "2026-12-07T08:00:00.123456Z",
     "datacontenttype": "application/json",
     "data": {"graph": ..., "status": 200, "error": null, "request": {...},
              "response": {...}, "models": {"ranker": {"name", "version", "alias"}},
              "routes": {...}, "errors": {...}, "nodes": {...}, "latency_ms": {...}}}

As in KServe's payload logger, the event's `id` is the request's id (Serve's
X-Request-ID), so a record is found from a client's log line, and the
`source` names the graph. The record is built on the request path from
references only; encoding (and redaction) happens in the writer's thread.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any, Optional

import orjson

from deployments.payloads.config import REDACTED

EVENT_TYPE = "io.serve-graphs.inference"
SHADOW_EVENT_TYPE = "io.serve-graphs.shadow"  # a shadow step's comparison, source graph/<graph>/<step>
SPEC_VERSION = "1.0"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event(graph: str, request_id: str, data: dict[str, Any], time: Optional[str] = None, type: str = EVENT_TYPE,
          part: Optional[str] = None) -> dict[str, Any]:
    """The event of one request (`part`: a step or node of the graph, in the source)."""
    return {
        "specversion": SPEC_VERSION,
        "id": request_id,
        "source": f"graph/{graph}" + (f"/{part}" if part else ""),
        "type": type,
        "time": time or now(),
        "datacontenttype": "application/json",
        "data": data,
    }


def models_of(state: dict[str, Any]) -> dict[str, Any]:
    """The model versions that answered: each node output that names its model."""
    return {name: value["model"] for name, value in state.items()
            if isinstance(value, dict) and isinstance(value.get("model"), dict)}


def redact(data: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """`data` with the value at each dotted path replaced by REDACTED (a copy
    of each dict on the way down; paths that are absent are left alone)."""
    for path in paths:
        data = _redacted(data, path.split("."))
    return data


def _redacted(value: Any, keys: list[str]) -> Any:
    if not isinstance(value, dict) or keys[0] not in value:
        return value
    copy = dict(value)
    copy[keys[0]] = REDACTED if len(keys) == 1 else _redacted(value[keys[0]], keys[1:])
    return copy


def jsonable(value: Any) -> Any:
    """orjson's `default` for what it does not write itself: numpy values
    other than arrays, pydantic models, else text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    return str(value)


def encode(record: dict[str, Any]) -> str:
    """One line of JSON, by orjson: a recommend record (the features of 20
    items, their scores, the answer) took 184 us with the standard library's
    encoder and 17 us with orjson, in the replica's writer thread, whose
    GIL time the request path pays. NaN and infinities become null;
    dataclasses (a feature frame) and numpy arrays are written as they are."""
    return orjson.dumps(record, default=jsonable, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()
